"""EasyLM / LWM / LAPA / ViPRA streaming-msgpack checkpoints, read and written with ``msgpack`` only (no pickle).

File layout: a plain concatenation of msgpack objects, each a 2-array ``[key, value]``:
- ``key``: the flattened param path as an array of strings, e.g. ``["transformer", "h", "scan_decoder", "attention",
  "wq", "kernel"]`` (train-state files prefix it with ``"params", "params"``);
- ``value``: bytes holding ``flax.serialization.to_bytes(tensor)``, itself msgpack of one of
  - ExtType(1, msgpack([shape, dtype_name, raw C-order bytes])) for an array (``ExtType(3, ...)`` for a scalar), or
  - a map ``{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...}, "chunks": {"0": ext, ...}}`` for arrays over
    2**30 bytes (flattened, split into chunks, concatenated back on read).
Floats are usually bfloat16 (EasyLM's default ``float_dtype``); dtype names are numpy names plus "bfloat16".

The format has no footer or record count, so ``iter_stream`` detects truncation by what is left over: a file that
ends inside a record raises ``TruncatedStreamError`` (naming the byte offset and the last complete record) instead of
silently yielding fewer tensors. A cut exactly at a record boundary cannot be told from a shorter file; the
converters then refuse with the first missing tensor.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

from latent_pretraining.convert.errors import ConversionError, InputNotFoundError, TruncatedStreamError

_EXT_NDARRAY = 1
_EXT_SCALAR = 3
_CHUNKED = "__msgpack_chunked_array__"
_MAX_CHUNK_BYTES = 2**30
READ_SIZE = 80 * 2**20


def _dtype(name: str | bytes) -> np.dtype:
    name = name.decode() if isinstance(name, bytes) else name
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _decode_ndarray(data: bytes) -> np.ndarray:
    shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buf, dtype=_dtype(dtype_name)).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _decode_ndarray(data)
    if code == _EXT_SCALAR:
        return _decode_ndarray(data)[()]
    raise ValueError(f"unsupported msgpack extension type {code} in streaming checkpoint (expected 1 or 3)")


def _unchunk(obj: Any) -> Any:
    if isinstance(obj, dict) and obj.get(_CHUNKED):
        shape = tuple(obj["shape"][str(i)] for i in range(len(obj["shape"])))
        chunks = [obj["chunks"][str(i)] for i in range(len(obj["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return obj


def decode_value(value: bytes) -> np.ndarray:
    """``flax.serialization.to_bytes(array)`` bytes -> numpy array (read-only view unless chunked)."""
    obj = msgpack.unpackb(value, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    obj = _unchunk(obj)
    if not isinstance(obj, np.ndarray | np.generic):
        raise ValueError(f"streaming checkpoint value decodes to {type(obj).__name__}, expected an array")
    return np.asarray(obj)


def encode_value(arr: np.ndarray) -> bytes:
    """numpy array -> bytes in the ``flax.serialization.to_bytes`` encoding (chunked above 2**30 bytes)."""
    arr = np.ascontiguousarray(arr)

    def ext(a: np.ndarray, code: int = _EXT_NDARRAY) -> msgpack.ExtType:
        payload = msgpack.packb((list(a.shape), a.dtype.name, a.tobytes("C")), use_bin_type=True)
        return msgpack.ExtType(code, payload)

    if arr.ndim == 0:
        return msgpack.packb(ext(arr, _EXT_SCALAR), use_bin_type=True)
    if arr.nbytes <= _MAX_CHUNK_BYTES:
        return msgpack.packb(ext(arr), use_bin_type=True)
    n = max(1, _MAX_CHUNK_BYTES // arr.dtype.itemsize)
    flat = arr.reshape(-1)
    chunks = {str(i): ext(flat[j : j + n]) for i, j in enumerate(range(0, flat.size, n))}
    obj = {_CHUNKED: True, "shape": {str(i): d for i, d in enumerate(arr.shape)}, "chunks": chunks}
    return msgpack.packb(obj, use_bin_type=True)


def iter_stream(path: str | pathlib.Path) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yields ``(key path, array)`` pairs one at a time from a streaming-msgpack file.

    Raises ``TruncatedStreamError`` if the file ends inside a record, ``ConversionError`` for a record that is not a
    ``[key path, tensor bytes]`` pair, a tensor that does not decode, or a key that appears twice.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"streaming msgpack checkpoint {path} not found")
    size = path.stat().st_size
    seen: set[tuple[str, ...]] = set()
    last, end = "(none)", 0
    with path.open("rb") as f:
        unpacker = msgpack.Unpacker(f, read_size=READ_SIZE, max_buffer_size=0, raw=False)
        i = 0
        while True:
            try:
                item = next(unpacker)
            except StopIteration:
                break
            except (msgpack.UnpackException, ValueError) as e:  # FormatError, StackError, ExtraData, ...
                raise ConversionError(f"{path}: record {i} at byte {end} is not valid msgpack ({e})") from e
            if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], bytes)
                    and isinstance(item[0], list | tuple) and item[0]):
                raise ConversionError(
                    f"{path}: record {i} is {type(item).__name__}, expected a [key path, to_bytes(tensor)] pair "
                    "(is this an EasyLM/LWM streaming 'params' file?)"
                )
            key = tuple(str(k) for k in item[0])
            if key in seen:
                raise ConversionError(f"{path}: tensor {'/'.join(key)!r} appears twice (records are unique paths)")
            seen.add(key)
            try:
                value = decode_value(item[1])
            except (msgpack.UnpackException, ValueError, TypeError, KeyError) as e:
                raise ConversionError(f"{path}: tensor {'/'.join(key)!r} (record {i}) does not decode ({e})") from e
            last, end, i = "/".join(key), unpacker.tell(), i + 1
            yield key, value
        if end < size:
            raise TruncatedStreamError(
                f"{path} is truncated: {size - end} trailing bytes are an incomplete record (the last complete "
                f"record, {i} of them, is {last!r}, ending at byte {end} of {size}); copy the file again"
            )


def write_stream(path: str | pathlib.Path, items: Iterable[tuple[tuple[str, ...], np.ndarray]]) -> None:
    """Writes ``(key path, array)`` pairs as a streaming-msgpack file (the inverse of ``iter_stream``)."""
    with pathlib.Path(path).open("wb") as f:
        packer = msgpack.Packer(use_bin_type=True)
        for key, arr in items:
            f.write(packer.pack((list(key), encode_value(np.asarray(arr)))))
