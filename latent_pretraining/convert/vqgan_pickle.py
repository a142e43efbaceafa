"""Safe import of LWM's released VQGAN weights (a pickle of the Flax params tree) into our formats.

One-time conversion (no network; LWM's file is e.g. the `vqgan` file of the LWM / LAPA JAX checkpoints):

    python scripts/convert_vqgan.py --input /path/to/lwm/vqgan --output checkpoints/vqgan_lwm.safetensors
    # optional: --orbax checkpoints/vqgan_lwm_orbax   (an orbax PyTree checkpoint of the same params)

then `cfg, params = latent_pretraining.model.vqgan.load_tokenizer("checkpoints/vqgan_lwm.safetensors")`.
The params tree maps 1:1 (identity) onto `latent_pretraining.model.vqgan.VQGAN` (table in that module); the
converter validates every name and shape against the `lwm` preset before writing anything.

Safety: the file is read with `RestrictedUnpickler`, whose `find_class` resolves only the globals needed to rebuild
plain containers and numpy arrays (table `ALLOWED`); any other global (os.system, builtins.eval, subprocess, ...) is
refused with `UnsafePickleError` naming it, *before* anything is called. Object-dtype arrays are refused too (their
payload would be arbitrary pickled objects). Two globals that a Flax/JAX-era pickle may contain are not imported but
replaced by local stand-ins that only build numpy/dict values: `jax._src.array._reconstruct_array` (a pickled
jax.Array → its numpy value) and `flax.core.frozen_dict.FrozenDict` (→ dict).

Bounds (`PickleLimits`; each refusal is one `UnsafePickleError` line, within a fraction of a second): the input size
(`max_bytes`); the opcode count, counted by a parse-only pre-scan (`pickletools.genops`) before anything is built, which
bounds the objects and memo references the unpickler can create; the decoded array bytes, which may not exceed the
pickle's own size (a legitimate pickle stores each payload once, so reusing one memoized payload for many arrays is
refused); and in the built tree, the nesting depth (`max_depth`), the node count (`max_nodes`), cycles, and shared
containers. A params tree is a tree: a container referenced twice is refused at once, which is what stops the
shared-reference bomb (`x = [x, x]` nested 60 times: 455 bytes, 2**60 paths).
"""

from __future__ import annotations

import contextvars
import dataclasses
import io
import os
import pickle
import pickletools
import re
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from core.errors import UserError
from latent_pretraining.convert.errors import ConversionError, InputNotFoundError

PyTree = Any


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle is refused: a global outside the allow-list (nothing was executed), a malformed stream, or a limit
    of `PickleLimits` exceeded."""


@dataclasses.dataclass(frozen=True)
class PickleLimits:
    """Upper bounds for one weights pickle (defaults are far above a VQGAN's: ~200 arrays, depth ~6)."""

    max_bytes: int = 16 * 2**30  # size of the pickle itself
    max_ops: int = 1_000_000  # pickle opcodes (each creates at most one object or memo reference)
    max_depth: int = 64  # container nesting in the built tree
    max_nodes: int = 1_000_000  # container entries in the built tree


# Bytes that array payloads may still decode to during one load (None outside `load_pickled_params`).
_ARRAY_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("_ARRAY_BUDGET", default=None)


_DTYPE_RE = re.compile(r"^[<>|=]?(b1|bool|[iuf][1248]|f2|c8|c16)$")


class _DType:
    """Stand-in for `numpy.dtype(...)` while unpickling: numeric kinds only; BUILD may only set the byte order."""

    def __init__(self, obj: Any, align: bool = False, copy: bool = False):
        if not isinstance(obj, str) or not _DTYPE_RE.match(obj):
            raise UnsafePickleError(f"refused numpy dtype {obj!r}: only bool/int/uint/float/complex arrays allowed")
        self.dtype = np.dtype(obj)

    def __setstate__(self, state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) >= 8 and state[1] in "<>|=" and state[2:5] == (None,) * 3
        if not ok or state[-1] not in (0, self.dtype.flags):
            raise UnsafePickleError(f"refused numpy dtype state {state!r}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _as_dtype(d: Any) -> np.dtype:
    if isinstance(d, _DType):
        return d.dtype
    return _DType(d).dtype


class _Array:
    """Stand-in for an ndarray being rebuilt (`_reconstruct` + BUILD); `value` is filled by `np.frombuffer`."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
            raise UnsafePickleError("refused ndarray state (expected (version, shape, dtype, fortran, bytes))")
        _, shape, dtype, fortran, raw = state
        self.value = _from_bytes(raw, _as_dtype(dtype), shape, "F" if fortran else "C")


def _from_bytes(raw: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refused ndarray shape {shape!r}")
    n = len(raw)
    if n % dtype.itemsize or n // dtype.itemsize != int(np.prod(shape, dtype=object)):
        raise UnsafePickleError(f"ndarray payload has {n} bytes, shape {shape} of {dtype} needs "
                                f"{int(np.prod(shape, dtype=object)) * dtype.itemsize}")
    budget = _ARRAY_BUDGET.get()
    if budget is not None:
        budget[0] -= n
        if budget[0] < 0:
            raise UnsafePickleError("decoded arrays exceed the pickle's own size: one payload is reused for many "
                                    "arrays through memo references (a memory bomb, not a weights file)")
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order=order).copy()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Array:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refused array reconstruction of {subtype!r} (only numpy.ndarray is allowed)")
    return _Array()


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("refused numpy scalar without a bytes payload")
    return _from_bytes(data, _as_dtype(dtype), (), "C")[()]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):
        raise UnsafePickleError("refused out-of-band buffer in a weights pickle")
    return _from_bytes(buf, _as_dtype(dtype), tuple(shape), "F" if order == "F" else "C")


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _jax_array(fun: Any, args: Any, arr_state: Any, aval_state: Any = None) -> _Array:
    if fun is not _reconstruct:
        raise UnsafePickleError(f"refused jax array payload built by {fun!r}")
    arr = fun(*args)
    arr.__setstate__(arr_state)
    return arr


def _frozendict(*args: Any) -> dict:
    if len(args) > 1 or (args and not isinstance(args[0], dict)):
        raise UnsafePickleError("refused FrozenDict payload that is not a dict")
    return dict(*args)


# (module, name) -> the local callable the pickle gets instead; nothing from the pickle is ever imported.
ALLOWED: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _DType,
                                       ("_codecs", "encode"): _latin1_encode,
                                       ("jax._src.array", "_reconstruct_array"): _jax_array,
                                       ("flax.core.frozen_dict", "FrozenDict"): _frozendict}
for _mod in ("numpy.core", "numpy._core"):
    ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _reconstruct
    ALLOWED[(f"{_mod}.multiarray", "scalar")] = _scalar
    ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only the globals in `ALLOWED` (containers and numpy arrays)."""

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(f"refused to load global '{module}.{name}': only plain containers and numpy "
                                    "arrays may appear in a weights pickle")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused persistent id {pid!r} in a weights pickle")


@dataclasses.dataclass
class _Walk:
    limits: PickleLimits
    nodes: int = 0
    open: dict[int, str] = dataclasses.field(default_factory=dict)  # containers on the current path -> where
    done: dict[int, str] = dataclasses.field(default_factory=dict)  # finished containers -> where first seen


def _check_tree(tree: Any, path: str = "", walk: _Walk | None = None, depth: int = 0) -> None:
    """Refuses anything but a finite tree of containers, numeric arrays and scalars (bounded depth and size)."""
    walk = walk or _Walk(PickleLimits())
    if isinstance(tree, (Mapping, list, tuple)) and len(tree):
        where = _short(path or "/")
        if depth >= walk.limits.max_depth:
            raise UnsafePickleError(f"containers nest deeper than {walk.limits.max_depth} levels (at {where}); "
                                    "a params tree is a few levels deep")
        key = id(tree)
        if key in walk.open:
            raise UnsafePickleError(f"the container at {where} is its own ancestor at {walk.open[key]} "
                                    "(a cycle); a params tree has none")
        if key in walk.done:
            raise UnsafePickleError(f"the container at {where} is the same object as the one at "
                                    f"{walk.done[key]} (a shared memo reference); a params tree shares no "
                                    "containers")
        walk.nodes += len(tree)
        if walk.nodes > walk.limits.max_nodes:
            raise UnsafePickleError(f"the tree has more than {walk.limits.max_nodes} entries")
        walk.open[key] = where
        items = tree.items() if isinstance(tree, Mapping) else enumerate(tree)
        for k, v in items:
            if isinstance(tree, Mapping) and not isinstance(k, str):
                raise UnsafePickleError(f"params tree key {k!r} at {where} is not a string")
            _check_tree(v, f"{path}/{k}", walk, depth + 1)
        del walk.open[key]
        walk.done[key] = where
    elif isinstance(tree, (Mapping, list, tuple)):
        pass  # empty containers (the empty tuple is a shared singleton)
    elif isinstance(tree, np.ndarray):  # built by _frombuffer from a checked numeric dtype
        if tree.dtype.hasobject:
            raise UnsafePickleError(f"object array at {path}")
    elif isinstance(tree, _Array):
        if tree.value is None:
            raise UnsafePickleError(f"array at {path} was never filled")
    elif not isinstance(tree, (int, float, bool, str, bytes, np.generic, type(None))):
        raise UnsafePickleError(f"unexpected {type(tree).__name__} at {path} in a weights pickle")


def _short(path: str, keep: int = 28) -> str:
    """A tree path cut to its two ends (a bomb's paths are hundreds of levels long)."""
    return path if len(path) <= 2 * keep + 3 else f"{path[:keep]}...{path[-keep:]}"


def _read_source(source: str | bytes | BinaryIO, limits: PickleLimits) -> bytes:
    """The pickle's bytes, refusing more than ``limits.max_bytes`` before reading them."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise InputNotFoundError(f"VQGAN weights pickle {os.fspath(source)!r} does not exist")
        size = os.path.getsize(source)
        if size > limits.max_bytes:
            raise UnsafePickleError(f"{os.fspath(source)} is {size} bytes; the limit is {limits.max_bytes}")
        with open(source, "rb") as f:
            data = f.read()
    else:
        data = source.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise UnsafePickleError(f"the pickle is over {limits.max_bytes} bytes (PickleLimits.max_bytes)")
    return data


def _prescan(data: bytes, limits: PickleLimits) -> None:
    """Parses the opcode stream without building anything; refuses too many opcodes or a malformed stream."""
    try:
        for n, _ in enumerate(pickletools.genops(io.BytesIO(data)), 1):
            if n > limits.max_ops:
                raise UnsafePickleError(f"the pickle has more than {limits.max_ops} opcodes; a weights pickle has a "
                                        "few per array (PickleLimits.max_ops)")
    except UnsafePickleError:
        raise
    except Exception as e:  # genops raises ValueError, EOFError, ... on damaged input
        raise UnsafePickleError(f"not a well-formed pickle ({type(e).__name__}: {e}); truncated or damaged?") from e


def load_pickled_params(source: str | bytes | BinaryIO, limits: PickleLimits | None = None) -> PyTree:
    """Reads a params pickle (path, bytes or file) safely; returns nested dicts of numpy arrays.

    A top-level {"params": tree} wrapper is removed. Bounded by ``limits`` (see the module docstring).
    """
    limits = limits or PickleLimits()
    data = _read_source(source, limits)
    _prescan(data, limits)
    token = _ARRAY_BUDGET.set([len(data)])
    try:
        tree = RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a damaged stream fails in many ways; none may escape as a traceback
        raise UnsafePickleError(f"the pickle does not load ({type(e).__name__}: {e})") from e
    finally:
        _ARRAY_BUDGET.reset(token)
    _check_tree(tree, walk=_Walk(limits))
    if not isinstance(tree, Mapping):
        raise ConversionError(f"expected a params dict in the pickle, got {type(tree).__name__}")
    if set(tree) == {"params"}:
        tree = tree["params"]
    return _to_plain(tree)


def _leaves(tree: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        return [kv for k, v in tree.items() for kv in _leaves(v, f"{path}/{k}" if path else str(k))]
    return [(path, tree)]


def _to_plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_plain(v) for k, v in tree.items()}
    return tree.value if isinstance(tree, _Array) else np.asarray(tree)


def convert(source: str | bytes | BinaryIO, output: str | None = None, *, orbax_dir: str | None = None,
            config: Any = None, overwrite: bool = False) -> tuple[Any, PyTree]:
    """Pickle → validated (config, params); writes a tokenizer safetensors file and/or an orbax checkpoint.

    `config` defaults to the LWM architecture (`VQGANConfig()`). Nothing is written unless validation passes; an
    existing `output` / `orbax_dir` is refused before the pickle is read unless `overwrite` (the file is replaced
    atomically; the directory by orbax's forced save).
    """
    from latent_pretraining.model import vqgan

    for path, what in ((output, "output file"), (orbax_dir, "orbax directory")):
        if path and os.path.lexists(path) and not overwrite:
            raise ConversionError(f"the {what} {path} already exists: pass --overwrite to replace it")
    config = config or vqgan.VQGANConfig()
    params = load_pickled_params(source)
    name = source if isinstance(source, str) else "pickle"
    try:
        vqgan.check_params(params, config, source=name)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    for path, leaf in _leaves(params):
        if np.asarray(leaf).dtype.kind == "f" and not np.isfinite(leaf).all():
            raise ConversionError(f"{name}: param {path!r} has {int(np.count_nonzero(~np.isfinite(leaf)))} "
                                  "non-finite values (NaN/inf)")
    params = {k: v for k, v in params.items()}
    if output:
        vqgan.save_tokenizer(output, params, config, extra={"source": str(source) if isinstance(source, str)
                                                           else "<pickle>", "converter": __name__})
    if orbax_dir:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.abspath(orbax_dir), params, force=overwrite)
    return config, params
