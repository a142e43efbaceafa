"""Our parameter checkpoint format and tree helpers shared by the converters.

A converted checkpoint is a directory::

    <dir>/config.json   {"format": "latent-vla/params-v1", "llama_config": {...LlamaConfig.to_dict()},
                         "extra_params": ["vte/embedding", ...], "source": "..."}
    <dir>/params/       an orbax PyTree checkpoint (``ocp.StandardCheckpointer``) of the plain params tree
                        ``{"transformer": {...}, "lm_head": {...}, <extra top-level entries>}`` (no "params" wrapper)

Extra entries are everything besides the LLaMA backbone (``transformer/{wte,h,ln_f}``, ``lm_head``): the VideoLLaMA's
embedding tables and heads (``vte``, ``vision_head``, ``dte``, ``delta_head``, ``ate``, ``action_head``, ...), kept at
the top level of the tree with their Flax layout (embeddings ``[V, D]``, head kernels ``[D, V]``).
The params item can be restored with ``ocp.StandardCheckpointer().restore(<dir>/params)`` (numpy arrays on host).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from latent_pretraining.convert.errors import ConversionError, InputNotFoundError, OutputExistsError
from latent_pretraining.model.llama_config import LlamaConfig

FORMAT = "latent-vla/params-v1"
BACKBONE_TOP = ("transformer", "lm_head")
BACKBONE_TRANSFORMER = ("wte", "h", "ln_f")


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dict -> ``{path tuple: leaf}``."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def unflatten(flat: Iterable[tuple[tuple[str, ...], Any]] | Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """``{path tuple: leaf}`` -> nested dict."""
    items = flat.items() if isinstance(flat, Mapping) else flat
    out: dict[str, Any] = {}
    for path, leaf in items:
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def is_extra(path: tuple[str, ...]) -> bool:
    """True for params outside the LLaMA backbone (VideoLLaMA tables and heads)."""
    if path[0] == "transformer":
        return len(path) < 2 or path[1] not in BACKBONE_TRANSFORMER
    return path[0] != "lm_head"


def extra_paths(params: Mapping[str, Any]) -> list[str]:
    return sorted("/".join(p) for p in flatten(params) if is_extra(p))


def set_scan_layout_np(params: dict[str, Any], scan_layers: bool) -> dict[str, Any]:
    """Scanned (``h/scan_decoder``, layer axis 0) <-> looped (``h/0``, ``h/1``, ...) layout, numpy, in place-ish."""
    h = params["transformer"]["h"]
    if ("scan_decoder" in h) == scan_layers:
        return params
    if scan_layers:
        n = len(h)
        missing = [str(i) for i in range(n) if str(i) not in h]
        if missing:
            raise ValueError(f"layer keys under transformer/h are not 0..{n - 1}: missing {missing}")
        flat_layers = [flatten(h.pop(str(i))) for i in range(n)]
        stacked = {p: np.stack([fl[p] for fl in flat_layers]) for p in flat_layers[0]}
        params["transformer"]["h"] = {"scan_decoder": unflatten(stacked)}
    else:
        flat = flatten(h.pop("scan_decoder"))
        n = next(iter(flat.values())).shape[0]
        params["transformer"]["h"] = {str(i): unflatten({p: v[i] for p, v in flat.items()}) for i in range(n)}
    return params


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def np_dtype(dtype: Any) -> np.dtype:
    """numpy dtype from a dtype or name; "bfloat16" is ml_dtypes' bfloat16."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def cast_tree(params: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """Casts floating leaves to ``dtype`` (a numpy / ml_dtypes dtype or its name)."""
    dtype = np_dtype(dtype)
    flat = flatten(params)
    return unflatten(
        (p, np.asarray(v).astype(dtype) if np.asarray(v).dtype.name in FLOAT_DTYPES else np.asarray(v))
        for p, v in flat.items()
    )


def check_output(path: str | pathlib.Path, overwrite: bool = False) -> pathlib.Path:
    """Refuses a non-empty output directory unless ``overwrite`` (called before any input is read)."""
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"output directory {path} exists and is not empty (pass --overwrite to replace it)")
    return path


@contextlib.contextmanager
def staged_dir(path: str | pathlib.Path, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yields a fresh sibling directory to write into; on success it replaces ``path`` in one rename.

    On any exception the staging directory is removed and ``path`` is left exactly as it was (absent, or its previous
    content). With ``overwrite`` the previous content is moved aside and deleted only after the new one is in place.
    """
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield stage
        old = None
        if path.exists():  # an empty directory, or overwrite=True
            old = path.parent / f".{path.name}.old-{os.getpid()}-{stage.name[-8:]}"
            os.replace(path, old)
        os.replace(stage, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def save_checkpoint(
    path: str | pathlib.Path, params: Mapping[str, Any], config: LlamaConfig, source: str = "", overwrite: bool = False
) -> pathlib.Path:
    """Writes ``params`` (plain nested dict of arrays, no "params" wrapper) and ``config`` as our checkpoint.

    Written to a staging directory and renamed into place: a failure leaves ``path`` as it was.
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    meta = {"format": FORMAT, "llama_config": config.to_dict(), "extra_params": extra_paths(params), "source": source}
    with staged_dir(path, overwrite) as stage:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(stage / "params", dict(params))
        ckptr.wait_until_finished()
        (stage / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_config(path: str | pathlib.Path) -> LlamaConfig:
    meta = _read_meta(path)
    try:
        return LlamaConfig.from_dict(meta["llama_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{pathlib.Path(path) / 'config.json'}: bad llama_config ({e})") from e


def _read_meta(path: str | pathlib.Path) -> dict[str, Any]:
    cfg_path = pathlib.Path(path) / "config.json"
    if not cfg_path.is_file():
        raise InputNotFoundError(f"{cfg_path} not found: {path} is not a latent-vla params checkpoint ({FORMAT})")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ConversionError(f"{cfg_path}: format {got!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, Any], LlamaConfig]:
    """Reads our checkpoint -> ``(params as numpy nested dict, LlamaConfig)``."""
    import orbax.checkpoint as ocp

    config = load_config(path)
    params = ocp.StandardCheckpointer().restore(pathlib.Path(path).absolute() / "params")
    return dict(params), config


def is_float(dtype: Any) -> bool:
    """numpy float dtypes and ml_dtypes' bfloat16 (whose numpy kind is "V")."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name == "bfloat16"


def count_nonfinite(arr: Any, chunk: int = 2**26) -> int:
    """NaN/inf count of a float array, in chunks (no full-size temporary for a 7B-scale tensor)."""
    flat = np.asarray(arr).reshape(-1)
    return sum(int(np.count_nonzero(~np.isfinite(flat[i : i + chunk]))) for i in range(0, flat.size, chunk))


def check_finite(name: str, arr: Any, source: str = "") -> None:
    """Refuses NaN/inf in a float tensor, naming it."""
    arr = np.asarray(arr)
    if is_float(arr.dtype):
        bad = count_nonfinite(arr)
        if bad:
            where = f"{source}: " if source else ""
            raise ConversionError(f"{where}tensor {name!r} {tuple(arr.shape)} has {bad} non-finite values (NaN/inf)")


def describe(cfg: LlamaConfig) -> str:
    """The config fields that decide tensor shapes, for error messages."""
    return (f"vocab_size={cfg.vocab_size}, hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
            f"num_layers={cfg.num_layers}, num_heads={cfg.num_heads}, kv_heads={cfg.kv_heads}, "
            f"head_dim={cfg.dim_per_head}, tie_embeddings={cfg.tie_embeddings}")


def backbone_shapes(cfg: LlamaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """``{path: shape}`` of every backbone param the model builds for ``cfg`` (in its scan layout), from the model
    itself (``jax.eval_shape``: nothing is allocated), so the check cannot drift from what the model loads."""
    import jax

    from latent_pretraining.model.llama import init_params

    shapes = jax.eval_shape(lambda r: init_params(cfg, r, length=2), jax.random.key(0))["params"]
    return {p: tuple(v.shape) for p, v in flatten(shapes).items()}


def validate_params(params: Mapping[str, Any], cfg: LlamaConfig, source: str = "", finite: bool = True) -> None:
    """Refuses, with one line naming the first offending tensor, a params tree whose backbone does not match ``cfg``
    exactly (missing, unexpected or mis-shaped tensors, non-float dtypes) or (``finite``) that holds NaN/inf anywhere.

    The tree must be in ``cfg.scan_layers``' layout; extra (non-backbone) entries are checked for finiteness only.
    """
    where = f"{source}: " if source else ""
    want = backbone_shapes(cfg)
    have = flatten(params)
    missing = [p for p in want if p not in have]
    if missing:
        p = missing[0]
        raise ConversionError(f"{where}tensor {'/'.join(p)!r} is missing (expected shape {want[p]} for {describe(cfg)})"
                              f"{f'; {len(missing)} tensors missing in all' if len(missing) > 1 else ''}")
    unexpected = [p for p in have if not is_extra(p) and p not in want]
    if unexpected:
        p = unexpected[0]
        raise ConversionError(f"{where}unexpected tensor {'/'.join(p)!r} {tuple(np.shape(have[p]))}: not part of a "
                              f"backbone with {describe(cfg)} ({len(unexpected)} unexpected in all)")
    for p, shape in want.items():
        got = tuple(np.shape(have[p]))
        if got != shape:
            raise ConversionError(f"{where}tensor {'/'.join(p)!r} has shape {got}, expected {shape} "
                                  f"for {describe(cfg)}")
        if not is_float(np.asarray(have[p]).dtype):
            raise ConversionError(f"{where}tensor {'/'.join(p)!r} has dtype {np.asarray(have[p]).dtype}, "
                                  "expected a float dtype (float32, bfloat16, float16)")
    if finite:
        for p, v in have.items():
            check_finite("/".join(p), v, source)
