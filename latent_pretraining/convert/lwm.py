"""EasyLM / LWM / LAPA / ViPRA streaming-msgpack ``params`` files -> our params tree.

The backbone paths are the same as ours (``transformer/wte``, ``transformer/h/scan_decoder/...`` stacked on axis 0 or
``transformer/h/<i>/...``, ``transformer/ln_f``, ``lm_head``; interleaved RoPE, so no permutation). Train-state files
have a leading ``params/params`` which is stripped. Extra tables and heads are kept as top-level entries:
``transformer/{vte,dte,ate,...}/embedding`` -> ``{vte,dte,ate,...}/embedding`` and ``{vision,delta,action,...}_head``
stay where they are.

The file does not store the config: shapes give vocab, hidden, ffn, layers and kv width; ``head_dim`` (128 for LLaMA-2
-7B) and ``rope_theta`` (5e7 for LWM-Chat-1M, LAPA and ViPRA) must be right and are arguments.

Refusals (``ConversionError``, a ``core.errors.UserError``; nothing is written): a stream that ends inside a record
(``TruncatedStreamError``), a missing backbone tensor (e.g. ``ffn_norm``) or one whose shape disagrees with the
others, NaN/inf anywhere, and a stream without ``lm_head`` unless tied embeddings are asked for explicitly
(``tie_embeddings=True`` / ``--tie-embeddings``; the LWM family does not tie, so a missing head usually means a
damaged or partial file).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from latent_pretraining.convert.checkpoint import (
    check_output,
    is_float,
    np_dtype,
    set_scan_layout_np,
    unflatten,
    validate_params,
)
from latent_pretraining.convert.errors import ConversionError
from latent_pretraining.convert.msgpack_stream import iter_stream, write_stream
from latent_pretraining.model.llama_config import LlamaConfig

LWM_ROPE_THETA = 5e7


def _our_path(key: tuple[str, ...]) -> tuple[str, ...]:
    while key and key[0] == "params":
        key = key[1:]
    if not key:
        raise ConversionError("empty key path in streaming checkpoint")
    if key[0] == "transformer" and len(key) > 1 and key[1] not in ("wte", "h", "ln_f"):
        return key[1:]  # extra embedding tables move to the top level
    return key


def read_lwm_params(path: str | pathlib.Path, param_dtype: str = "float32") -> dict[str, Any]:
    """Streams the file into a params tree (numpy, floats cast to ``param_dtype``), layout as stored."""
    dt = np_dtype(param_dtype)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    prefixes: set[tuple[str, ...]] = set()
    for key, arr in iter_stream(path):
        ours = _our_path(key)
        if ours in flat or ours in prefixes or any(ours[:k] in flat for k in range(1, len(ours))):
            raise ConversionError(f"{path}: tensor {'/'.join(key)!r} clashes with another path (leaf vs subtree)")
        flat[ours] = arr.astype(dt) if is_float(arr.dtype) else arr
        prefixes.update(ours[:k] for k in range(1, len(ours)))
    params = unflatten(flat)
    if not isinstance(params.get("transformer"), dict) or "h" not in params["transformer"]:
        raise ConversionError(f"{path}: no transformer/h/... tensors; top-level keys are {sorted(params)} "
                              "(truncated or not an LWM-family params file?)")
    return params


def _leaf(params: dict[str, Any], *path: str) -> np.ndarray:
    node: Any = params
    for k in path:
        if not isinstance(node, dict) or k not in node:
            raise ConversionError(f"tensor {'/'.join(path)!r} is missing from the stream (needed to infer the config; "
                                  "is the file complete?)")
        node = node[k]
    if not isinstance(node, np.ndarray):
        raise ConversionError(f"{'/'.join(path)!r} is a group of tensors, expected one tensor")
    return node


def infer_config(
    params: dict[str, Any], head_dim: int = 128, tie_embeddings: bool | None = None, **overrides: Any
) -> LlamaConfig:
    """LlamaConfig from param shapes; ``head_dim`` and ``overrides`` (e.g. ``rope_theta``) fill the rest.

    ``tie_embeddings``: None requires ``lm_head/kernel`` in the stream (the LWM family never ties); True requires it
    absent (the output head is ``transformer/wte``); False requires it present.
    """
    has_head = "lm_head" in params
    if tie_embeddings is None and not has_head:
        raise ConversionError("the stream has no 'lm_head/kernel': pass --tie-embeddings (tie_embeddings=True) only if "
                              "the model ties its output head to transformer/wte (LWM, LAPA and ViPRA do not)")
    tie = not has_head if tie_embeddings is None else bool(tie_embeddings)
    if tie and has_head:
        raise ConversionError("tied embeddings were asked for but the stream has its own 'lm_head/kernel'")
    if not tie and not has_head:
        raise ConversionError("tensor 'lm_head/kernel' is missing from the stream and tied embeddings were not asked "
                              "for (--tie-embeddings)")
    emb = _leaf(params, "transformer", "wte", "embedding")
    if emb.ndim != 2:
        raise ConversionError(f"tensor 'transformer/wte/embedding' has shape {emb.shape}, expected [vocab, hidden]")
    vocab, hidden = emb.shape
    h = params["transformer"]["h"]
    scan = "scan_decoder" in h
    prefix = ("transformer", "h", "scan_decoder") if scan else ("transformer", "h", "0")
    lead = 1 if scan else 0
    shapes = {}
    for name, path in {"wq": ("attention", "wq"), "wk": ("attention", "wk"), "w1": ("feed_forward", "w1")}.items():
        arr = _leaf(params, *prefix, *path, "kernel")
        if arr.ndim != 2 + lead:
            raise ConversionError(f"tensor {'/'.join((*prefix, *path, 'kernel'))!r} has shape {arr.shape}, expected "
                                  f"{'[layers, in, out]' if scan else '[in, out]'}")
        shapes[name] = arr.shape
    n_layers = shapes["wq"][0] if scan else len(h)
    ffn = shapes["w1"][-1]
    q_width, kv_width = shapes["wq"][-1], shapes["wk"][-1]
    if q_width % head_dim or kv_width % head_dim:
        raise ConversionError(f"head_dim {head_dim} does not divide the q/k widths {q_width}/{kv_width} "
                              "(pass the model's --head-dim)")
    fields = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_layers=n_layers,
        num_heads=q_width // head_dim,
        num_kv_heads=0 if kv_width == q_width else kv_width // head_dim,  # 0 = MHA
        head_dim=0 if q_width == hidden else head_dim,  # 0 = hidden // heads
        tie_embeddings=tie,
        rope_theta=LWM_ROPE_THETA,
    )
    fields.update(overrides)
    try:
        return LlamaConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"the stream's shapes give no valid config ({e})") from e


def load_lwm(
    path: str | pathlib.Path,
    config: LlamaConfig | None = None,
    head_dim: int = 128,
    tie_embeddings: bool | None = None,
    **overrides: Any,
) -> tuple[dict[str, Any], LlamaConfig]:
    """Reads an LWM-family params file -> ``(params in config's scan layout and param dtype, config)``.

    Every backbone tensor is checked against the config (given, or inferred from a few shapes): names, shapes,
    float dtypes and finiteness (``checkpoint.validate_params``); ``tie_embeddings`` as in ``infer_config``
    (a given ``config`` decides it).
    """
    param_dtype = config.param_dtype if config else overrides.get("param_dtype", "float32")
    params = read_lwm_params(path, param_dtype)
    tie = config.tie_embeddings if config is not None else tie_embeddings
    inferred = infer_config(params, head_dim, tie_embeddings=tie, **overrides)
    if config is not None:
        shape_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "kv_heads", "tie_embeddings")
        pairs = {f: (getattr(config, f), getattr(inferred, f)) for f in shape_fields}
        bad = {f: pair for f, pair in pairs.items() if pair[0] != pair[1]}
        if bad:
            raise ConversionError(f"{path}: config does not match the checkpoint (field: (config, checkpoint)): {bad}")
    cfg = config or inferred
    stored_scan = "scan_decoder" in params["transformer"]["h"]
    validate_params(params, cfg.replace(scan_layers=stored_scan), source=str(path))
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
    tie_embeddings: bool | None = None,
    **overrides: Any,
) -> LlamaConfig:
    """LWM-family streaming ``params`` file -> our checkpoint directory (see ``checkpoint.py``); nothing is written
    unless the whole stream is present and consistent."""
    from latent_pretraining.convert.checkpoint import save_checkpoint

    check_output(dst, overwrite)  # refuse before streaming a possibly large file
    params, cfg = load_lwm(
        src, head_dim=head_dim, tie_embeddings=tie_embeddings, rope_theta=rope_theta, scan_layers=scan_layers,
        param_dtype=param_dtype, **overrides,
    )  # fmt: skip
    save_checkpoint(dst, params, cfg, source=f"lwm:{src}", overwrite=overwrite)
    return cfg
