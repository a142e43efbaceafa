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

Refusals (``ConversionError``, a ``core.errors.UserError``; nothing is written): ``from-hf`` checks config.json
against every tensor header before reading any data: each expected name present (per declared layer), no unexpected
``model.*`` / ``lm_head`` tensor (e.g. a third layer when two are declared), each shape exactly the one config.json
implies, float dtypes only; then every tensor read is checked for NaN/inf. ``to-hf`` checks our checkpoint the same
way (``checkpoint.validate_params``) and writes the checkpoint's own float dtype unless ``dtype`` says otherwise.

One file of ~510 lines on purpose: both directions follow the one mapping table above (import and export are its
two halves), so splitting them would put the table's two readers in different places.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from latent_pretraining.convert.checkpoint import (
    check_finite,
    check_output,
    flatten,
    is_extra,
    is_float,
    np_dtype,
    staged_dir,
    unflatten,
    validate_params,
)
from latent_pretraining.convert.errors import (
    ConversionError,
    InputNotFoundError,
    UnsupportedCheckpointError,
)
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


_REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Buffers some older HF checkpoints saved; derived from rope_theta, so they are ignored rather than refused.
_IGNORED_HF = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_HF_FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """LlamaConfig from a HF ``config.json`` dict (transformers 4.x or 5.x layout)."""
    if not isinstance(hf, Mapping):
        raise ConversionError(f"config.json holds a {type(hf).__name__}, expected a JSON object")
    if hf.get("model_type", "llama") != "llama":
        raise ConversionError(f"config.json model_type is {hf.get('model_type')!r}; only 'llama' is supported")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConversionError("config.json: expected hidden_act='silu' and no attention/mlp biases (plain LLaMA)")
    missing = [k for k in _REQUIRED_HF_FIELDS if k not in hf]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)} (expected a LlamaForCausalLM config)")
    bad = [k for k in (*_REQUIRED_HF_FIELDS, "num_key_value_heads", "head_dim")
           if hf.get(k) is not None and not (isinstance(hf[k], int) and not isinstance(hf[k], bool) and hf[k] > 0)]
    if bad:
        raise ConversionError(f"config.json: {bad[0]}={hf[bad[0]]!r}, expected a positive integer")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedCheckpointError(
            f"config.json: rope type {rope_type!r} is not supported (only 'default' RoPE)")
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    try:
        return _llama_config(hf, heads, kv, head_dim, rope, overrides)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"config.json: {e}") from e


def _llama_config(hf: Mapping[str, Any], heads: int, kv: int, head_dim: int, rope: Mapping[str, Any],
                  overrides: Mapping[str, Any]) -> LlamaConfig:
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
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise ConversionError(f"{index}: not a safetensors index with a 'weight_map' ({e!r})") from e
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{index}: 'weight_map' is a {type(weight_map).__name__}, expected an object")
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors") if p.name != EXTRA_FILE)
            if not files:
                raise InputNotFoundError(
                    f"no *.safetensors weights (or model.safetensors.index.json) in {self.path}")
            weight_map = {}
            for name in files:
                with self._open(name) as f:
                    weight_map.update(dict.fromkeys(f.keys(), name))
        self.weight_map: dict[str, str] = weight_map

    def _open(self, fname: str) -> Any:
        path = self.path / fname
        if not path.is_file():
            raise InputNotFoundError(f"{path} (named in the safetensors index) does not exist")
        try:
            return safe_open(path, framework="numpy")
        except SafetensorError as e:  # e.g. a truncated file: "incomplete metadata, file not fully covered"
            raise ConversionError(f"{path}: unreadable safetensors file ({e})") from e

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def header(self, name: str) -> tuple[tuple[int, ...], str]:
        """``(shape, safetensors dtype code e.g. "F32")`` of a tensor, from the file header (no data read)."""
        with self._open(self.weight_map[name]) as f:
            try:
                sl = f.get_slice(name)
            except SafetensorError as e:
                raise ConversionError(f"{self.path / self.weight_map[name]}: no tensor {name!r} ({e})") from e
            return tuple(sl.get_shape()), str(sl.get_dtype())

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise ConversionError(f"tensor {name!r} not found in {self.path} (have e.g. {sorted(self.weight_map)[:5]})")
        with self._open(self.weight_map[name]) as f:
            try:
                return f.get_tensor(name)
            except (SafetensorError, TypeError, ValueError) as e:
                raise ConversionError(f"{self.path / self.weight_map[name]}: cannot read {name!r} ({e})") from e


def hf_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """``{HF name: shape}`` of every tensor a ``LlamaForCausalLM`` with ``cfg`` has (HF ``[out, in]`` layout)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.dim_per_head
    q, kv = cfg.num_heads * hd, cfg.kv_heads * hd
    layer = {
        "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    }  # fmt: skip
    assert set(layer) == set(_LAYER_MAP)
    out = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        out.update({f"model.layers.{i}.{n}": shape for n, shape in layer.items()})
    out["model.norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, d)
    return out


def _hf_describe(cfg: LlamaConfig) -> str:
    return (f"config.json: vocab_size={cfg.vocab_size}, hidden_size={cfg.hidden_size}, "
            f"intermediate_size={cfg.intermediate_size}, num_hidden_layers={cfg.num_layers}, "
            f"num_attention_heads={cfg.num_heads}, num_key_value_heads={cfg.kv_heads}, head_dim={cfg.dim_per_head}, "
            f"tie_word_embeddings={cfg.tie_embeddings}")


def check_hf_tensors(src: SafetensorsDir, cfg: LlamaConfig) -> None:
    """Refuses (one line naming the first offending tensor) a directory whose tensors do not match ``cfg`` exactly:
    missing or unexpected names (layer count, tied head), shapes, non-float dtypes. Reads headers only."""
    want = hf_shapes(cfg)
    have = [n for n in src.weight_map if not _IGNORED_HF.match(n)]
    missing = [n for n in want if n not in src]
    if missing:
        n = missing[0]
        raise ConversionError(f"{src.path}: tensor {n!r} is missing (expected shape {want[n]} from {_hf_describe(cfg)})"
                              f"{f'; {len(missing)} tensors missing in all' if len(missing) > 1 else ''}")
    unexpected = sorted((n for n in have if n not in want), key=_natural)
    if cfg.tie_embeddings and "lm_head.weight" in unexpected:
        unexpected.remove("lm_head.weight")  # allowed if it equals the embedding (checked in params_from_hf)
    if unexpected:
        n = unexpected[0]
        shape, _ = src.header(n)
        layer = re.match(r"^model\.layers\.(\d+)\.", n)
        why = (f"config.json declares num_hidden_layers={cfg.num_layers} (layers 0..{cfg.num_layers - 1})" if layer
               else f"a LlamaForCausalLM with {_hf_describe(cfg)} has no such tensor")
        raise ConversionError(f"{src.path}: unexpected tensor {n!r} {shape}: {why}; "
                              f"{len(unexpected)} unexpected tensors in all")
    for n, shape in want.items():
        got, dtype = src.header(n)
        if got != shape:
            raise ConversionError(
                f"{src.path}: tensor {n!r} has shape {got}, expected {shape} from {_hf_describe(cfg)}")
        if dtype not in _HF_FLOAT_DTYPES:
            raise ConversionError(f"{src.path}: tensor {n!r} has dtype {dtype}, expected one of "
                                  f"{', '.join(_HF_FLOAT_DTYPES.values())}")


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def params_from_hf(src: SafetensorsDir, cfg: LlamaConfig) -> dict[str, Any]:
    """HF tensors -> our params tree (numpy, ``cfg.param_dtype``, layout per ``cfg.scan_layers``).

    Validates the directory against ``cfg`` first (``check_hf_tensors``) and every tensor read for NaN/inf.
    """
    check_hf_tensors(src, cfg)
    dt = np_dtype(cfg.param_dtype)

    def get(name: str) -> np.ndarray:
        w = src.get(name)
        check_finite(name, w, str(src.path))
        return w.astype(dt)

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
    elif "lm_head.weight" in src:  # some exports store the tied head anyway: only accept an exact copy
        head = get("lm_head.weight")
        if head.shape != t["wte"]["embedding"].shape or not np.array_equal(head, t["wte"]["embedding"]):
            raise ConversionError(f"{src.path}: config.json says tie_word_embeddings=true but 'lm_head.weight' "
                                  "differs from 'model.embed_tokens.weight' (set tie_word_embeddings=false?)")
    extra = src.path / EXTRA_FILE
    if extra.is_file():
        with src._open(EXTRA_FILE) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                path = tuple(name.split("/"))
                if not is_extra(path):
                    raise ConversionError(f"{extra}: {name!r} is a backbone path; the sidecar holds extra params only")
                value = f.get_tensor(name)
                check_finite(name, value, str(extra))
                node = params
                for k in path[:-1]:
                    node = node.setdefault(k, {})
                node[path[-1]] = value
    return params


def hf_tensors(params: Mapping[str, Any], cfg: LlamaConfig, dtype: Any) -> list[tuple[str, tuple[int, ...], Callable]]:
    """``(HF name, shape, thunk -> array)`` for every HF tensor, computed lazily (one tensor in RAM at a time)."""
    dt = np_dtype(dtype)
    t = params["transformer"]
    out: list[tuple[str, tuple[int, ...], Callable]] = []

    def cast(name: str, get: Callable[[], np.ndarray]) -> np.ndarray:
        with np.errstate(over="ignore"):  # overflow is refused just below, naming the tensor
            w = np.ascontiguousarray(np.asarray(get()).astype(dt))
        check_finite(name, w, f"cast to {dt.name}")  # e.g. float32 weights beyond float16's range become inf
        return w

    def add(name: str, get: Callable[[], np.ndarray], shape: tuple[int, ...]) -> None:
        out.append((name, shape, lambda: cast(name, get)))

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
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes a directory ``transformers.LlamaForCausalLM.from_pretrained`` loads, shard by shard.

    Peak extra RAM is about one shard; extra (non-backbone) params go to ``extra_params.safetensors``. Written to a
    staging directory renamed into place, so a failure (or a refusal) leaves ``out`` as it was; a non-empty ``out``
    is refused unless ``overwrite`` (stale shards of an earlier export would otherwise be mixed in).
    """
    out = pathlib.Path(out).absolute()
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
    with staged_dir(out, overwrite) as stage:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            data = {name: thunk() for name, _, thunk in shard}
            total += sum(a.nbytes for a in data.values())
            save_file(data, str(stage / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(data, fname))
            del data
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (stage / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (stage / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False}
        (stage / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (stage / OUR_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        extras = {"/".join(p): np.ascontiguousarray(v) for p, v in flatten(params).items() if is_extra(p)}
        if extras:
            save_file(extras, str(stage / EXTRA_FILE), metadata={"format": "latent-vla-extra-params", "layout": "flax"})
    return out


def read_hf_dir(path: str | pathlib.Path, param_dtype: str = "float32", **overrides: Any) -> tuple[dict, LlamaConfig]:
    """HF directory -> ``(params, LlamaConfig)``; ``overrides`` set LlamaConfig fields (e.g. ``scan_layers``).

    Raises ``ConversionError`` (one line naming the tensor) when config.json and the tensors disagree.
    """
    path = pathlib.Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputNotFoundError(f"{cfg_file} not found: expected a Hugging Face LlamaForCausalLM directory")
    try:
        hf = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{cfg_file}: not valid JSON ({e})") from e
    cfg = config_from_hf(hf, param_dtype=param_dtype, **overrides)
    return params_from_hf(SafetensorsDir(path), cfg), cfg


def iter_hf_names(cfg: LlamaConfig) -> Iterator[str]:
    """All HF tensor names of a config (for checks)."""
    yield from hf_shapes(cfg)


def checkpoint_dtype(params: Mapping[str, Any]) -> str:
    """The backbone's float dtype by name; when it mixes several, the narrowest that holds them all exactly
    (float16 + bfloat16 -> float32), so writing it rounds nothing."""
    floats = {np.asarray(v).dtype for p, v in flatten(params).items() if not is_extra(p)}
    floats = {d for d in floats if is_float(d)}
    if len(floats) == 1:
        return floats.pop().name
    return "float64" if any(d.itemsize == 8 for d in floats) else "float32"


def convert_from_hf(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    scan_layers: bool = True,
    param_dtype: str = "float32",
    overwrite: bool = False,
) -> LlamaConfig:
    """HF ``LlamaForCausalLM`` directory -> our checkpoint directory (see ``checkpoint.py``); nothing is written
    unless every tensor matches config.json."""
    from latent_pretraining.convert.checkpoint import save_checkpoint

    check_output(dst, overwrite)  # refuse before reading a possibly large model
    params, cfg = read_hf_dir(src, param_dtype=param_dtype, scan_layers=scan_layers)
    save_checkpoint(dst, params, cfg, source=f"hf:{src}", overwrite=overwrite)
    return cfg


def convert_to_hf(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = 2 * 2**30,
    overwrite: bool = False,
) -> LlamaConfig:
    """Our checkpoint directory -> HF directory (+ ``extra_params.safetensors`` for non-backbone params).

    ``dtype`` None writes the checkpoint's own dtype (``checkpoint_dtype``): a float32 checkpoint stays float32.
    """
    from latent_pretraining.convert.checkpoint import load_checkpoint

    check_output(dst, overwrite)
    params, cfg = load_checkpoint(src)
    stored_scan = "scan_decoder" in params.get("transformer", {}).get("h", {})  # hf_tensors reads either layout
    validate_params(params, cfg.replace(scan_layers=stored_scan), source=str(src))
    write_hf_dir(dst, params, cfg, dtype=dtype or checkpoint_dtype(params), max_shard_bytes=max_shard_bytes,
                 overwrite=overwrite)
    return cfg
