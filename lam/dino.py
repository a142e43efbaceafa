"""DINOv2 ViT (optionally with registers) in Flax, with weights converted from HF `Dinov2Model` /
`Dinov2WithRegistersModel` safetensors (ViPRA's spatial encoder is ViT-B/14 with 4 registers).

    model = Dinov2(cfg)                          # cfg: configs/lam.py `_dino()` fields
    params = convert_hf(load_safetensors(path), cfg)
    hidden = model.apply({"params": params}, pixel_values)   # float[B, H, W, 3] (ImageNet-normalized) → [B, 1+R+N, D]
    tokens = model.apply({"params": params}, images, method=Dinov2.patch_tokens)  # images in [0, 1] → [B, N, D]

Position embeddings are interpolated (bicubic, jax.image.resize) when the patch grid differs from the checkpoint's;
that path is not bit-compatible with torch's antialiased bicubic (the equivalence test uses the native grid).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Array = jax.Array
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class _Layer(nn.Module):
    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.cfg
        d, h = c.hidden_size, c.num_heads
        ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)
        ls = lambda name: self.param(name, nn.initializers.constant(c.layerscale_value), (d,))
        y = ln("norm1")(x)
        split = lambda t: t.reshape(*t.shape[:-1], h, d // h)
        q, k, v = (split(nn.Dense(d, name=n)(y)) for n in ("q_proj", "k_proj", "v_proj"))
        att = jax.nn.dot_product_attention(q, k, v)
        x = x + ls("layer_scale1") * nn.Dense(d, name="o_proj")(att.reshape(*x.shape[:-1], d))
        y = ln("norm2")(x)
        y = nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(int(d * c.mlp_ratio), name="fc1")(y), approximate=False))
        return x + ls("layer_scale2") * y


class Dinov2(nn.Module):
    """See the module docstring."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        c = self.cfg
        d, p = c.hidden_size, c.patch_size
        n_pos = (c.image_size // p) ** 2
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(pixel_values)
        b, gh, gw, _ = x.shape
        x = x.reshape(b, gh * gw, d)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d))
        pos = self.param("position_embeddings", nn.initializers.normal(0.02), (1, 1 + n_pos, d))
        self.param("mask_token", nn.initializers.zeros, (1, d))  # kept for checkpoint compatibility (unused)
        patch_pos = pos[:, 1:]
        if gh * gw != n_pos or gh != gw:
            g0 = round(n_pos**0.5)
            patch_pos = jax.image.resize(patch_pos.reshape(1, g0, g0, d), (1, gh, gw, d), "bicubic").reshape(1, -1, d)
        x = jnp.concatenate([jnp.broadcast_to(cls + pos[:, :1], (b, 1, d)), x + patch_pos], axis=1)
        if c.num_register_tokens:
            reg = self.param("register_tokens", nn.initializers.zeros, (1, c.num_register_tokens, d))
            x = jnp.concatenate([x[:, :1], jnp.broadcast_to(reg, (b, *reg.shape[1:])), x[:, 1:]], axis=1)
        for i in range(c.num_layers):
            x = _Layer(c, name=f"layer_{i}")(x)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="layernorm")(x)

    def patch_tokens(self, images: Array) -> Array:
        """images float[B, H, W, 3] in [0, 1] (resized to the patch grid) → normalized patch tokens float[B, N, D]."""
        x = (images - IMAGENET_MEAN) / IMAGENET_STD
        return self(x)[:, 1 + self.cfg.num_register_tokens:]


_RENAMES = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
            ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"))


def convert_hf(state: dict[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """HF Dinov2(WithRegisters)Model state dict (numpy, optional 'dinov2.'/'model.' prefixes) → Flax params."""
    sd = {}
    for k, v in state.items():
        for pre in ("dinov2.", "model."):
            k = k[len(pre):] if k.startswith(pre) else k
        for old, new in _RENAMES:
            k = k.replace(old, new)
        sd[k] = np.asarray(v, np.float32)

    def get(name: str) -> np.ndarray:
        if name not in sd:
            raise KeyError(f"DINOv2 checkpoint lacks {name!r} (has e.g. {sorted(sd)[:5]})")
        return sd[name]

    dense = lambda pre: {"kernel": get(pre + ".weight").T, "bias": get(pre + ".bias")}
    norm = lambda pre: {"scale": get(pre + ".weight"), "bias": get(pre + ".bias")}
    e = "embeddings."
    params: dict[str, Any] = {
        "patch_embed": {"kernel": get(e + "patch_embeddings.projection.weight").transpose(2, 3, 1, 0),
                        "bias": get(e + "patch_embeddings.projection.bias")},
        "cls_token": get(e + "cls_token"), "position_embeddings": get(e + "position_embeddings"),
        "mask_token": get(e + "mask_token").reshape(1, -1), "layernorm": norm("layernorm"),
    }
    if cfg.num_register_tokens:
        params["register_tokens"] = get(e + "register_tokens")
    for i in range(cfg.num_layers):
        pre = f"encoder.layer.{i}."
        layer = {n: dense(pre + "attention." + n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        layer.update({"fc1": dense(pre + "mlp.fc1"), "fc2": dense(pre + "mlp.fc2"), "norm1": norm(pre + "norm1"),
                      "norm2": norm(pre + "norm2"), "layer_scale1": get(pre + "layer_scale1.lambda1"),
                      "layer_scale2": get(pre + "layer_scale2.lambda1")})
        params[f"layer_{i}"] = layer
    return params


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """A safetensors file as a dict of numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(path)
