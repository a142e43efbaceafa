"""Hugging Face ``LlamaForCausalLM`` <-> our LLaMA params, through safetensors (no torch needed).

Weight mapping (HF ``[out, in]`` Linear weights -> our ``[in, out]`` kernels; layers stacked on axis 0 when scanned):

| HF                                              | ours (under ``transformer/h/<layer>/``)        |
|-------------------------------------------------|------------------------------------------------|
| model.embed_tokens.weight [V, D]                | transformer/wte/embedding [V, D]               |
| model.layers.i.self_attn.{q,k}_proj.weight      | attention/{wq,wk}/kernel = rope_unpermute(W).T |
| model.layers.i.self_attn.{v,o}_proj.weight      | attention/{wv,wo}/kernel = W.T                 |
| model.layers.i.mlp.{gate,up,down}_proj.weight   | feed_forward/{w1,w3,w2}/kernel = W.T           |
| model.layers.i.{input,post_attention}_layernorm | attention_norm/kernel, ffn_norm/kernel         |
| model.norm.weight, lm_head.weight               | transformer/ln_f/kernel, lm_head/kernel = W.T  |

Rotary layout: we rotate interleaved pairs (2i, 2i+1) like Meta/LWM; HF rotates halves (i, i + H/2). Within each head
HF row ``h * H/2 + i`` is our row ``2i + h`` (the permutation of HF's ``convert_llama_weights_to_hf``), applied to q
and k (with the kv head count for k). Both directions are exact, so HF -> ours -> HF is bit-exact.

Extra (non-backbone) params are written by ``to-hf`` to ``extra_params.safetensors`` next to the HF files, with
"/"-joined Flax paths as names (e.g. ``vte/embedding`` [V, D], ``vision_head/kernel`` [D, V]) and our LlamaConfig in
``latent_vla_config.json``; ``from-hf`` reads them back when present.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from latent_pretraining.convert.checkpoint import flatten, is_extra, np_dtype, unflatten
from latent_pretraining.model.llama_config import LlamaConfig

EXTRA_FILE = "extra_params.safetensors"
OUR_CONFIG_FILE = "latent_vla_config.json"

_LAYER_MAP = {  # HF name inside model.layers.i -> (our path inside the layer, rope heads: "q", "k" or None)
    "self_attn.q_proj.weight": (("attention", "wq", "kernel"), "q"),
    "self_attn.k_proj.weight": (("attention", "wk", "kernel"), "k"),
    "self_attn.v_proj.weight": (("attention", "wv", "kernel"), None),
    "self_attn.o_proj.weight": (("attention", "wo", "kernel"), None),
    "mlp.gate_proj.weight": (("feed_forward", "w1", "kernel"), None),
    "mlp.up_proj.weight": (("feed_forward", "w3", "kernel"), None),
    "mlp.down_proj.weight": (("feed_forward", "w2", "kernel"), None),
    "input_layernorm.weight": (("attention_norm", "kernel"), None),
    "post_attention_layernorm.weight": (("ffn_norm", "kernel"), None),
}


def hf_to_ours_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """HF rotate-half row order -> interleaved order for a q/k weight ``[heads * H, D_in]``."""
    out, d_in = w.shape
    hd = out // heads
    return w.reshape(heads, 2, hd // 2, d_in).transpose(0, 2, 1, 3).reshape(out, d_in)


def ours_to_hf_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of ``hf_to_ours_rows``."""
    out, d_in = w.shape
    hd = out // heads
    return w.reshape(heads, hd // 2, 2, d_in).transpose(0, 2, 1, 3).reshape(out, d_in)


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """LlamaConfig from a HF ``config.json`` dict (transformers 4.x or 5.x layout)."""
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"config.json model_type is {hf.get('model_type')!r}; only 'llama' is supported")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("config.json: expected hidden_act='silu' and no attention/mlp biases (plain LLaMA)")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise NotImplementedError(f"config.json: rope type {rope_type!r} is not supported (only 'default' RoPE)")
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return LlamaConfig(
        **{
            "vocab_size": hf["vocab_size"],
            "hidden_size": hf["hidden_size"],
            "intermediate_size": hf["intermediate_size"],
            "num_layers": hf["num_hidden_layers"],
            "num_heads": heads,
            "num_kv_heads": 0 if kv == heads else kv,  # 0 / 0 = the defaults (MHA, hidden // heads)
            "head_dim": 0 if head_dim == hf["hidden_size"] // heads else head_dim,
            "max_seq_len": hf.get("max_position_embeddings", 4096),
            "rms_eps": hf.get("rms_norm_eps", 1e-6),
            "rope_theta": float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
            "initializer_range": hf.get("initializer_range", 0.02),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "bos_token_id": hf.get("bos_token_id") if isinstance(hf.get("bos_token_id"), int) else 1,
            "eos_token_id": hf.get("eos_token_id") if isinstance(hf.get("eos_token_id"), int) else 2,
            **overrides,
        }
    )


def config_to_hf(cfg: LlamaConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """HF ``config.json`` dict (readable by transformers 4.x and 5.x)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "use_cache": True,
        "torch_dtype": torch_dtype,
    }


class SafetensorsDir:
    """Lazy tensor access to a HF model directory (``model.safetensors`` or shards with an index)."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors") if p.name != EXTRA_FILE)
            if not files:
                raise FileNotFoundError(f"no *.safetensors weights (or model.safetensors.index.json) in {self.path}")
            weight_map = {}
            for name in files:
                with safe_open(self.path / name, framework="numpy") as f:
                    weight_map.update(dict.fromkeys(f.keys(), name))
        self.weight_map: dict[str, str] = weight_map

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise KeyError(f"tensor {name!r} not found in {self.path} (have e.g. {sorted(self.weight_map)[:5]})")
        with safe_open(self.path / self.weight_map[name], framework="numpy") as f:
            return f.get_tensor(name)


def params_from_hf(src: SafetensorsDir, cfg: LlamaConfig) -> dict[str, Any]:
    """HF tensors -> our params tree (numpy, ``cfg.param_dtype``, layout per ``cfg.scan_layers``)."""
    dt = np_dtype(cfg.param_dtype)
    get = lambda name: src.get(name).astype(dt)
    t: dict[str, Any] = {
        "wte": {"embedding": get("model.embed_tokens.weight")},
        "ln_f": {"kernel": get("model.norm.weight")},
    }
    heads = {"q": cfg.num_heads, "k": cfg.kv_heads}
    per_layer: dict[tuple[str, ...], list[np.ndarray] | np.ndarray] = {}
    for i in range(cfg.num_layers):
        for hf_name, (path, rope) in _LAYER_MAP.items():
            w = get(f"model.layers.{i}.{hf_name}")
            if rope is not None:
                w = hf_to_ours_rows(w, heads[rope])
            w = np.ascontiguousarray(w.T) if w.ndim == 2 else w
            if cfg.scan_layers:
                if path not in per_layer:
                    per_layer[path] = np.empty((cfg.num_layers, *w.shape), dt)
                per_layer[path][i] = w  # type: ignore[index]
            else:
                per_layer[(str(i), *path)] = w
    t["h"] = unflatten(per_layer) if not cfg.scan_layers else {"scan_decoder": unflatten(per_layer)}
    params: dict[str, Any] = {"transformer": t}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(get("lm_head.weight").T)}
    extra = src.path / EXTRA_FILE
    if extra.is_file():
        with safe_open(extra, framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                path = tuple(name.split("/"))
                node = params
                for k in path[:-1]:
                    node = node.setdefault(k, {})
                node[path[-1]] = f.get_tensor(name)
    return params


def hf_tensors(params: Mapping[str, Any], cfg: LlamaConfig, dtype: Any) -> list[tuple[str, tuple[int, ...], Callable]]:
    """``(HF name, shape, thunk -> array)`` for every HF tensor, computed lazily (one tensor in RAM at a time)."""
    dt = np_dtype(dtype)
    t = params["transformer"]
    out: list[tuple[str, tuple[int, ...], Callable]] = []

    def add(name: str, get: Callable[[], np.ndarray], shape: tuple[int, ...]) -> None:
        out.append((name, shape, lambda: np.ascontiguousarray(np.asarray(get()).astype(dt))))

    add("model.embed_tokens.weight", lambda: t["wte"]["embedding"], tuple(t["wte"]["embedding"].shape))
    heads = {"q": cfg.num_heads, "k": cfg.kv_heads}
    h = t["h"]
    for i in range(cfg.num_layers):
        layer = (
            (lambda p, i=i: _at(h["scan_decoder"], p)[i]) if "scan_decoder" in h else (lambda p, i=i: _at(h[str(i)], p))
        )
        for hf_name, (path, rope) in _LAYER_MAP.items():
            shape = tuple(np.shape(layer(path)))

            def get(path=path, rope=rope, layer=layer) -> np.ndarray:
                w = np.asarray(layer(path))
                if w.ndim == 2:
                    w = w.T
                    if rope is not None:
                        w = ours_to_hf_rows(w, heads[rope])
                return w

            add(f"model.layers.{i}.{hf_name}", get, shape[::-1])
    add("model.norm.weight", lambda: t["ln_f"]["kernel"], tuple(t["ln_f"]["kernel"].shape))
    if not cfg.tie_embeddings:
        head = params["lm_head"]["kernel"]
        add("lm_head.weight", lambda: np.asarray(head).T, tuple(head.shape[::-1]))
    return out


def _at(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def write_hf_dir(
    out: str | pathlib.Path,
    params: Mapping[str, Any],
    cfg: LlamaConfig,
    dtype: str = "float32",
    max_shard_bytes: int = 2 * 2**30,
) -> pathlib.Path:
    """Writes a directory ``transformers.LlamaForCausalLM.from_pretrained`` loads, shard by shard.

    Peak extra RAM is about one shard; extra (non-backbone) params go to ``extra_params.safetensors``.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(params, cfg, dtype)
    itemsize = np_dtype(dtype).itemsize
    shards: list[list[tuple[str, tuple[int, ...], Callable]]] = [[]]
    size = 0
    for item in tensors:
        nbytes = int(np.prod(item[1])) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        data = {name: thunk() for name, _, thunk in shard}
        total += sum(a.nbytes for a in data.values())
        save_file(data, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(data, fname))
        del data
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / OUR_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    extras = {"/".join(p): np.ascontiguousarray(v) for p, v in flatten(params).items() if is_extra(p)}
    if extras:
        save_file(extras, str(out / EXTRA_FILE), metadata={"format": "latent-vla-extra-params", "layout": "flax"})
    return out


def read_hf_dir(path: str | pathlib.Path, param_dtype: str = "float32", **overrides: Any) -> tuple[dict, LlamaConfig]:
    """HF directory -> ``(params, LlamaConfig)``; ``overrides`` set LlamaConfig fields (e.g. ``scan_layers``)."""
    path = pathlib.Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: expected a Hugging Face LlamaForCausalLM directory")
    cfg = config_from_hf(json.loads(cfg_file.read_text()), param_dtype=param_dtype, **overrides)
    return params_from_hf(SafetensorsDir(path), cfg), cfg


def iter_hf_names(cfg: LlamaConfig) -> Iterator[str]:
    """All HF tensor names of a config (for checks)."""
    yield "model.embed_tokens.weight"
    for i in range(cfg.num_layers):
        for n in _LAYER_MAP:
            yield f"model.layers.{i}.{n}"
    yield "model.norm.weight"
    if not cfg.tie_embeddings:
        yield "lm_head.weight"


def convert_from_hf(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    scan_layers: bool = True,
    param_dtype: str = "float32",
    overwrite: bool = False,
) -> LlamaConfig:
    """HF ``LlamaForCausalLM`` directory -> our checkpoint directory (see ``checkpoint.py``)."""
    from latent_pretraining.convert.checkpoint import save_checkpoint

    params, cfg = read_hf_dir(src, param_dtype=param_dtype, scan_layers=scan_layers)
    save_checkpoint(dst, params, cfg, source=f"hf:{src}", overwrite=overwrite)
    return cfg


def convert_to_hf(
    src: str | pathlib.Path, dst: str | pathlib.Path, *, dtype: str = "bfloat16", max_shard_bytes: int = 2 * 2**30
) -> LlamaConfig:
    """Our checkpoint directory -> HF directory (+ ``extra_params.safetensors`` for non-backbone params)."""
    from latent_pretraining.convert.checkpoint import load_checkpoint

    params, cfg = load_checkpoint(src)
    write_hf_dir(dst, params, cfg, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return cfg
