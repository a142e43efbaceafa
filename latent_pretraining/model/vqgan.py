"""LWM-compatible VQGAN image tokenizer (Flax linen): frames → token ids → frames.

    cfg, params = vqgan.load_tokenizer("runs/vqgan_demo/tokenizer.safetensors")   # or a converted LWM file
    ids = vqgan.encode(params, frames, config=cfg)      # uint8[B,H,W,3] (or [-1,1] floats) -> int32[B,H/f,W/f]
    rec = vqgan.decode(params, ids, config=cfg)         # int32[B,h,w] -> uint8[B,h·f,w·f,3]
    enc = vqgan.make_encode_fn(cfg, mesh)               # jitted with the batch sharded over (dp, fsdp)

`encode_fn` / `decode_fn` are the pure (un-jitted) versions to call inside another jitted function (a train step).
Leading dims are flattened, so video [B,T,H,W,3] gives ids [B,T,h,w].

Architecture (LWM `VQGANModel`): conv_in → per level `num_res_blocks` ResnetBlocks (GroupNorm+SiLU) and a
pad(0,1)+3×3/2 VALID conv downsample (not after the last level) → mid (2 ResnetBlocks, no attention) → GN, SiLU,
3×3 conv to `z_channels` → 1×1 `quant_conv` to `embed_dim` → nearest codebook entry (straight-through) →
1×1 `post_quant_conv` to `z_channels` → decoder (mirror, `num_res_blocks + 1` blocks per level, nearest ×2 + 3×3
conv upsampling) → output clipped to [-1, 1]. Downsampling factor f = 2^(len(channel_mult) - 1).

Params tree ↔ LWM's released `vqgan` pickle: the mapping is the identity (same nested names, same shapes, Flax
kernel layout [kh, kw, in, out]). With n = len(channel_mult), R = num_res_blocks:

    quantize/embeddings                         [num_embeddings, embed_dim]      (8192, 64)
    quant_conv/{kernel,bias}                    [1,1,z_channels,embed_dim]
    post_quant_conv/{kernel,bias}               [1,1,embed_dim,z_channels]
    encoder/Conv_0                              3×3, 3 → hidden
    encoder/DownsamplingBlock_{l}/ResnetBlock_{r}/{GroupNorm_0,Conv_0,GroupNorm_1,Conv_1[,Conv_2 = 1×1 shortcut]}
        l < n, r < R; Conv_2 exists where the level changes the channel count
    encoder/DownsamplingBlock_{l}/Downsample_0/Conv_0   (l < n-1)
    encoder/MidBlock_0/ResnetBlock_{0,1}, encoder/GroupNorm_0, encoder/Conv_1 (→ z_channels)
    decoder/Conv_0 (z → hidden·mult[-1]), decoder/MidBlock_0/ResnetBlock_{0,1}
    decoder/UpsamplingBlock_{k}/ResnetBlock_{r} (r ≤ R), .../Upsample_0/Conv_0 — level = n-1-k (call order!)
    decoder/GroupNorm_0, decoder/Conv_1 (→ 3)

Training with an EMA codebook (`VQGAN(cfg, ema_codebook=True)`) keeps `quantize/{embeddings,cluster_size,
embed_sum}` in the non-trained collection `"vq"` instead of `params`; `export_params` merges the codebook back into
the LWM layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from latent_pretraining.model.vqgan_layers import Decoder, Encoder

PyTree = Any


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """Architecture hyper-parameters (frozen and hashable: usable as a module attribute and a jit static arg).

    Defaults are LWM's released tokenizer: 256² input, f = 16 → 16×16 = 256 tokens, codebook 8192×64.
    """

    resolution: int = 256  # nominal input size (init / docs); any multiple of the downsampling factor works
    in_channels: int = 3
    out_channels: int = 3
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)
    num_res_blocks: int = 2
    z_channels: int = 64
    num_embeddings: int = 8192
    embed_dim: int = 64
    num_groups: int = 32
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        for m in (1, *self.channel_mult):
            if (self.hidden_channels * m) % self.num_groups:
                raise ValueError(f"VQGANConfig: hidden_channels·mult = {self.hidden_channels * m} is not divisible "
                                 f"by num_groups={self.num_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    def token_grid(self, height: int, width: int | None = None) -> tuple[int, int]:
        """(h, w) token grid of an image; raises if the size is not a multiple of the downsampling factor."""
        width = height if width is None else width
        f = self.downsample
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of the VQGAN downsampling factor {f}")
        return height // f, width // f

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQGANConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"VQGANConfig: unknown keys {unknown}; valid keys are {sorted(names)}")
        return cls(**{k: (tuple(v) if k == "channel_mult" else v) for k, v in d.items()})


def _uniform_init(n: int) -> Any:
    return lambda rng, shape, dtype=jnp.float32: jax.random.uniform(rng, shape, dtype, -1.0 / n, 1.0 / n)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook [K, D] with a straight-through estimator.

    With `ema=True` the table lives in the `"vq"` collection with EMA statistics `cluster_size` [K] and `embed_sum`
    [K, D] (updated by the trainer, `ema_codebook_update`); otherwise it is the param `embeddings` (LWM layout).
    """

    num_embeddings: int
    embed_dim: int
    ema: bool = False

    def setup(self) -> None:
        k, d = self.num_embeddings, self.embed_dim
        if self.ema:
            init = _uniform_init(k)
            self.table = self.variable("vq", "embeddings", lambda: init(self.make_rng("params"), (k, d)))
            self.variable("vq", "cluster_size", lambda: jnp.zeros((k,), jnp.float32))
            self.variable("vq", "embed_sum", lambda: jnp.zeros((k, d), jnp.float32))
        else:
            self.embeddings = self.param("embeddings", _uniform_init(k), (k, d), jnp.float32)

    def codebook(self) -> jax.Array:
        return self.table.value if self.ema else self.embeddings

    def lookup(self, ids: jax.Array) -> jax.Array:
        """int[...] → float32[..., D]."""
        return jnp.take(self.codebook(), ids, axis=0)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [..., D] → (straight-through quantized z [..., D] float32, ids int32[...])."""
        ids = nearest_code(z, self.codebook())
        z = z.astype(jnp.float32)
        zq = self.lookup(ids)
        return z + jax.lax.stop_gradient(zq - z), ids


def nearest_code(z: jax.Array, table: jax.Array) -> jax.Array:
    """Index of the nearest codebook row (squared L2, float32): z [..., D], table [K, D] → int32[...]."""
    zf = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    t = table.astype(jnp.float32)
    d = jnp.sum(zf**2, axis=1, keepdims=True) + jnp.sum(t**2, axis=1)[None] - 2.0 * zf @ t.T
    return jnp.argmin(d, axis=1).astype(jnp.int32).reshape(z.shape[:-1])


class VQGAN(nn.Module):
    """The full tokenizer. `__call__(x)` (init / training) → dict(recon (unclipped), z, zq, ids)."""

    config: VQGANConfig
    ema_codebook: bool = False

    def setup(self) -> None:
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantize = VectorQuantizer(c.num_embeddings, c.embed_dim, ema=self.ema_codebook)
        conv = partial(nn.Conv, kernel_size=(1, 1), dtype=c.compute_dtype, param_dtype=c.params_dtype)
        self.quant_conv = conv(c.embed_dim)
        self.post_quant_conv = conv(c.z_channels)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B,H,W,3] in [-1,1] → (zq [B,h,w,D] straight-through, ids int32[B,h,w], z [B,h,w,D] pre-quantization)."""
        z = self.quant_conv(self.encoder(x)).astype(jnp.float32)
        zq, ids = self.quantize(z)
        return zq, ids, z

    def decode_latents(self, zq: jax.Array) -> jax.Array:
        """zq [B,h,w,D] → unclipped pixels float32[B,H,W,3]."""
        return self.decoder(self.post_quant_conv(zq)).astype(jnp.float32)

    def decode_ids(self, ids: jax.Array) -> jax.Array:
        """ids int[B,h,w] → pixels float32[B,H,W,3] clipped to [-1, 1]."""
        return jnp.clip(self.decode_latents(self.quantize.lookup(ids)), -1.0, 1.0)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        zq, ids, z = self.encode(x)
        return {"recon": self.decode_latents(zq), "z": z, "zq": zq, "ids": ids}


# ------------------------------------------------------------------------------------------- functional API
def to_model_range(frames: jax.Array) -> jax.Array:
    """uint8 [0,255] → float32 [-1,1]; floating inputs are taken as already in [-1,1] (LWM's x/127.5 - 1)."""
    if jnp.issubdtype(frames.dtype, jnp.integer):
        return frames.astype(jnp.float32) / 127.5 - 1.0
    return frames.astype(jnp.float32)


def to_uint8(x: jax.Array) -> jax.Array:
    """float [-1,1] → uint8 [0,255] (rounded, clipped)."""
    return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def encode_fn(params: PyTree, frames: jax.Array, *, config: VQGANConfig) -> jax.Array:
    """frames [..., H, W, 3] uint8 or [-1,1] float → ids int32[..., H/f, W/f]. Pure: call inside jitted code."""
    lead, (h, w, c) = frames.shape[:-3], frames.shape[-3:]
    config.token_grid(h, w)
    if c != config.in_channels:
        raise ValueError(f"encode: expected {config.in_channels} channels in frames [..., H, W, C], got shape "
                         f"{frames.shape}")
    x = to_model_range(frames.reshape(-1, h, w, c))
    _, ids, _ = VQGAN(config).apply({"params": params}, x, method=VQGAN.encode)
    return ids.reshape(*lead, *ids.shape[1:])


def decode_fn(params: PyTree, ids: jax.Array, *, config: VQGANConfig, as_uint8: bool = True) -> jax.Array:
    """ids int[..., h, w] → frames [..., h·f, w·f, 3]: uint8, or float32 in [-1,1] with `as_uint8=False`."""
    lead = ids.shape[:-2]
    x = VQGAN(config).apply({"params": params}, ids.reshape(-1, *ids.shape[-2:]), method=VQGAN.decode_ids)
    x = x.reshape(*lead, *x.shape[1:])
    return to_uint8(x) if as_uint8 else x


encode = jax.jit(encode_fn, static_argnames=("config",))
decode = jax.jit(decode_fn, static_argnames=("config", "as_uint8"))


def _batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(("dp", "fsdp"), *([None] * (ndim - 1))))


def make_encode_fn(config: VQGANConfig, mesh: Mesh, frames_ndim: int = 4) -> Any:
    """jit(encode_fn) with params replicated and the batch (dim 0) sharded over the mesh's (dp, fsdp) axes."""
    rep = NamedSharding(mesh, P())
    return jax.jit(partial(encode_fn, config=config), in_shardings=(rep, _batch_sharding(mesh, frames_ndim)),
                   out_shardings=_batch_sharding(mesh, frames_ndim - 1))


def make_decode_fn(config: VQGANConfig, mesh: Mesh, ids_ndim: int = 3, as_uint8: bool = True) -> Any:
    """jit(decode_fn) with params replicated and the batch (dim 0) sharded over the mesh's (dp, fsdp) axes."""
    rep = NamedSharding(mesh, P())
    return jax.jit(partial(decode_fn, config=config, as_uint8=as_uint8),
                   in_shardings=(rep, _batch_sharding(mesh, ids_ndim)),
                   out_shardings=_batch_sharding(mesh, ids_ndim + 1))


def param_shapes(config: VQGANConfig) -> PyTree:
    """The params tree as ShapeDtypeStructs (LWM layout, codebook included); nothing is computed."""
    x = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, config.in_channels), jnp.float32)
    return jax.eval_shape(VQGAN(config).init, jax.random.PRNGKey(0), x)["params"]


def init_params(config: VQGANConfig, seed: int = 0) -> PyTree:
    """Random params (host numpy, LWM layout) with the modules' init families, drawn by numpy (no XLA compile:
    Flax's jitted init takes ~20 s of compilation even for a tiny config on CPU). Conv kernels ~ N(0, 1/fan_in),
    biases 0, GroupNorm scales 1, codebook ~ U(-1/K, 1/K). Training uses the module's own init instead."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def one(path: Any, s: jax.ShapeDtypeStruct) -> Any:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "embeddings":
            return rng.uniform(-1.0 / s.shape[0], 1.0 / s.shape[0], s.shape).astype(s.dtype)
        if name == "kernel":
            return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(s.dtype)
        return (np.ones if name == "scale" else np.zeros)(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(one, param_shapes(config))


def export_params(params: PyTree, vq_state: Mapping[str, Any] | None) -> PyTree:
    """Params in the LWM layout: drops non-VQGAN entries (e.g. a discriminator) and merges an EMA codebook."""
    keep = ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")
    out = {k: params[k] for k in keep if k in params}
    if vq_state is not None:
        out["quantize"] = {"embeddings": vq_state["quantize"]["embeddings"]}
    if "quantize" not in out:
        raise ValueError("export_params: no codebook (params/quantize or vq_state['quantize'] expected)")
    return out


# ---------------------------------------------------------------------------------------------- file format
def save_tokenizer(path: str, params: PyTree, config: VQGANConfig, extra: Mapping[str, Any] | None = None) -> None:
    """One safetensors file: flat "a/b/c" float32 tensors + the config (and `extra` info) as JSON metadata."""
    import numpy as np
    from safetensors.numpy import save_file

    flat = {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(jax.device_get(v), np.float32)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    meta = {"format": "latent_vla.vqgan.v1", "vqgan_config": json.dumps(config.to_dict())}
    if extra:
        meta["info"] = json.dumps(dict(extra), default=str)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(flat, tmp, metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_tokenizer(path: str) -> tuple[VQGANConfig, PyTree]:
    """(config, params) from a `save_tokenizer` file (a trained demo tokenizer or converted LWM weights)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQGAN tokenizer file {path!r} does not exist (train one with "
                                "latent_pretraining.vqgan_train or convert LWM's with scripts/convert_vqgan.py)")
    from safetensors import SafetensorError

    from core.errors import InvalidInput

    hint = "expected a VQGAN tokenizer .safetensors (latent_pretraining.vqgan_train's, or scripts/convert_vqgan.py's)"
    try:
        f = safe_open(path, framework="numpy")
    except SafetensorError as e:  # e.g. LWM's pickle given as the tokenizer
        raise InvalidInput(f"{path} is not a safetensors file ({e}): {hint}") from e
    with f:
        meta = f.metadata() or {}
        if "vqgan_config" not in meta:
            raise InvalidInput(f"{path}: no 'vqgan_config' metadata, so not a VQGAN tokenizer file: {hint}")
        config = VQGANConfig.from_dict(json.loads(meta["vqgan_config"]))
        params: dict[str, Any] = {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            node = params
            *parents, leaf = key.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = f.get_tensor(key)
    check_params(params, config, source=path)
    return config, params


def check_params(params: PyTree, config: VQGANConfig, source: str = "params") -> None:
    """Raises one clear error if `params` does not match the architecture of `config` (names and shapes)."""
    want = param_shapes(config)
    fw = {"/".join(str(getattr(k, "key", k)) for k in p): v.shape
          for p, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    fg = {"/".join(str(getattr(k, "key", k)) for k in p): tuple(getattr(v, "shape", ()))
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing, extra = sorted(set(fw) - set(fg)), sorted(set(fg) - set(fw))
    if missing or extra:
        raise ValueError(f"{source}: params do not match the VQGAN config: {len(missing)} missing (e.g. "
                         f"{missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})")
    bad = [(k, fg[k], tuple(fw[k])) for k in fw if fg[k] != tuple(fw[k])]
    if bad:
        k, got, exp = bad[0]
        raise ValueError(f"{source}: param {k!r} has shape {got}, expected {exp} ({len(bad)} mismatches)")
