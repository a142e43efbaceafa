"""EasyLM / LWM / LAPA / ViPRA streaming-msgpack ``params`` files -> our params tree.

The backbone paths are the same as ours (``transformer/wte``, ``transformer/h/scan_decoder/...`` stacked on axis 0 or
``transformer/h/<i>/...``, ``transformer/ln_f``, ``lm_head``; interleaved RoPE, so no permutation). Train-state files
have a leading ``params/params`` which is stripped. Extra tables and heads are kept as top-level entries:
``transformer/{vte,dte,ate,...}/embedding`` -> ``{vte,dte,ate,...}/embedding`` and ``{vision,delta,action,...}_head``
stay where they are.

The file does not store the config: shapes give vocab, hidden, ffn, layers and kv width; ``head_dim`` (128 for LLaMA-2
-7B) and ``rope_theta`` (5e7 for LWM-Chat-1M, LAPA and ViPRA) must be right and are arguments.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from latent_pretraining.convert.checkpoint import np_dtype, set_scan_layout_np, unflatten
from latent_pretraining.convert.msgpack_stream import iter_stream, write_stream
from latent_pretraining.model.llama_config import LlamaConfig

LWM_ROPE_THETA = 5e7


def _our_path(key: tuple[str, ...]) -> tuple[str, ...]:
    while key and key[0] == "params":
        key = key[1:]
    if not key:
        raise ValueError("empty key path in streaming checkpoint")
    if key[0] == "transformer" and len(key) > 1 and key[1] not in ("wte", "h", "ln_f"):
        return key[1:]  # extra embedding tables move to the top level
    return key


def read_lwm_params(path: str | pathlib.Path, param_dtype: str = "float32") -> dict[str, Any]:
    """Streams the file into a params tree (numpy, floats cast to ``param_dtype``), layout as stored."""
    dt = np_dtype(param_dtype)
    flat = {}
    for key, arr in iter_stream(path):
        flat[_our_path(key)] = arr.astype(dt) if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" else arr
    params = unflatten(flat)
    if "transformer" not in params or "h" not in params["transformer"]:
        raise ValueError(f"{path}: no transformer/h/... keys; top-level keys are {sorted(params)}")
    return params


def infer_config(params: dict[str, Any], head_dim: int = 128, **overrides: Any) -> LlamaConfig:
    """LlamaConfig from param shapes; ``head_dim`` and ``overrides`` (e.g. ``rope_theta``) fill the rest."""
    t = params["transformer"]
    vocab, hidden = t["wte"]["embedding"].shape
    h = t["h"]
    if "scan_decoder" in h:
        layer = h["scan_decoder"]
        n_layers = layer["attention"]["wq"]["kernel"].shape[0]
        pick = lambda p: p.shape[1:]
    else:
        layer, n_layers = h["0"], len(h)
        pick = lambda p: p.shape
    ffn = pick(layer["feed_forward"]["w1"]["kernel"])[1]
    q_width = pick(layer["attention"]["wq"]["kernel"])[1]
    kv_width = pick(layer["attention"]["wk"]["kernel"])[1]
    if q_width % head_dim or kv_width % head_dim:
        raise ValueError(f"head_dim {head_dim} does not divide the q/k widths {q_width}/{kv_width}")
    fields = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_layers=n_layers,
        num_heads=q_width // head_dim,
        num_kv_heads=0 if kv_width == q_width else kv_width // head_dim,  # 0 = MHA
        head_dim=0 if q_width == hidden else head_dim,  # 0 = hidden // heads
        tie_embeddings="lm_head" not in params,
        rope_theta=LWM_ROPE_THETA,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def load_lwm(
    path: str | pathlib.Path, config: LlamaConfig | None = None, head_dim: int = 128, **overrides: Any
) -> tuple[dict[str, Any], LlamaConfig]:
    """Reads an LWM-family params file -> ``(params in config's scan layout and param dtype, config)``."""
    param_dtype = config.param_dtype if config else overrides.get("param_dtype", "float32")
    params = read_lwm_params(path, param_dtype)
    inferred = infer_config(params, head_dim, **overrides)
    if config is not None:
        shape_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "kv_heads", "tie_embeddings")
        pairs = {f: (getattr(config, f), getattr(inferred, f)) for f in shape_fields}
        bad = {f: pair for f, pair in pairs.items() if pair[0] != pair[1]}
        if bad:
            raise ValueError(f"{path}: config does not match the checkpoint (field: (config, checkpoint)): {bad}")
    cfg = config or inferred
    return set_scan_layout_np(params, cfg.scan_layers), cfg


def write_lwm_params(path: str | pathlib.Path, params: dict[str, Any], dtype: str = "bfloat16") -> None:
    """Writes our params (backbone + extras) as an LWM streaming-msgpack file (extras back under ``transformer/``
    for ``*te`` embedding tables), floats cast to ``dtype``."""
    from latent_pretraining.convert.checkpoint import flatten

    dt = np_dtype(dtype)

    def items():
        for p, v in flatten(params).items():
            key = p
            if p[0] not in ("transformer", "lm_head") and p[-1] == "embedding":
                key = ("transformer", *p)
            v = np.asarray(v)
            yield key, (v.astype(dt) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v)

    write_stream(path, items())


def convert_from_lwm(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    head_dim: int = 128,
    rope_theta: float = LWM_ROPE_THETA,
    scan_layers: bool = True,
    param_dtype: str = "float32",
    overwrite: bool = False,
    **overrides: Any,
) -> LlamaConfig:
    """LWM-family streaming ``params`` file -> our checkpoint directory (see ``checkpoint.py``)."""
    from latent_pretraining.convert.checkpoint import save_checkpoint

    params, cfg = load_lwm(
        src, head_dim=head_dim, rope_theta=rope_theta, scan_layers=scan_layers, param_dtype=param_dtype, **overrides
    )
    save_checkpoint(dst, params, cfg, source=f"lwm:{src}", overwrite=overwrite)
    return cfg
