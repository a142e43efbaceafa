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

import json
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

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


def save_checkpoint(
    path: str | pathlib.Path, params: Mapping[str, Any], config: LlamaConfig, source: str = "", overwrite: bool = False
) -> pathlib.Path:
    """Writes ``params`` (plain nested dict of arrays, no "params" wrapper) and ``config`` as our checkpoint."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"output checkpoint directory {path} exists and is not empty (pass overwrite=True)")
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "llama_config": config.to_dict(), "extra_params": extra_paths(params), "source": source}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "params", dict(params), force=overwrite)
    ckptr.wait_until_finished()
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_config(path: str | pathlib.Path) -> LlamaConfig:
    meta = _read_meta(path)
    return LlamaConfig.from_dict(meta["llama_config"])


def _read_meta(path: str | pathlib.Path) -> dict[str, Any]:
    cfg_path = pathlib.Path(path) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: {path} is not a latent-vla params checkpoint ({FORMAT})")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, Any], LlamaConfig]:
    """Reads our checkpoint -> ``(params as numpy nested dict, LlamaConfig)``."""
    import orbax.checkpoint as ocp

    config = load_config(path)
    params = ocp.StandardCheckpointer().restore(pathlib.Path(path).absolute() / "params")
    return dict(params), config
