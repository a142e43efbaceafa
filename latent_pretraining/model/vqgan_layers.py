"""Convolutional building blocks of the LWM-architecture VQGAN encoder/decoder (Flax linen, NHWC).

Every submodule is given an explicit name equal to the auto-generated name of the corresponding module in LWM's
`lwm/vqgan.py` (`Conv_0`, `DownsamplingBlock_3`, `ResnetBlock_1`, `GroupNorm_0`, ...), so the params tree of LWM's
released `vqgan` file loads 1:1 (see the mapping table in `latent_pretraining/model/vqgan.py`). The layers here are
written for this project; only the architecture facts (block order, channel plan, padding) follow LWM.

Shapes: B batch, H/W spatial, C channels; all convs are NHWC with kernels [kh, kw, C_in, C_out].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _conv(features: int, kernel: int, name: str, cfg: Any, **kw: Any) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, name=name,
                   **kw)


def _norm(name: str, cfg: Any) -> nn.GroupNorm:
    # Flax's GroupNorm defaults (epsilon 1e-6, scale and bias) are what LWM's weights were trained with.
    return nn.GroupNorm(num_groups=cfg.num_groups, epsilon=1e-6, dtype=cfg.compute_dtype,
                        param_dtype=cfg.params_dtype, name=name)


class ResnetBlock(nn.Module):
    """GN → SiLU → 3×3 conv → GN → SiLU → 3×3 conv + residual (1×1-projected if C changes): [B,H,W,C]→[B,H,W,out]."""

    cfg: Any
    out_channels: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.out_channels or x.shape[-1]
        h = nn.silu(_norm("GroupNorm_0", self.cfg)(x))
        h = _conv(out, 3, "Conv_0", self.cfg)(h)
        h = nn.silu(_norm("GroupNorm_1", self.cfg)(h))
        h = _conv(out, 3, "Conv_1", self.cfg)(h)
        if out != x.shape[-1]:
            x = _conv(out, 1, "Conv_2", self.cfg)(x)
        return x + h


class Downsample(nn.Module):
    """Pads one row/column at the bottom/right, then a 3×3 stride-2 VALID conv: [B,H,W,C] → [B,H/2,W/2,C]."""

    cfg: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, "Conv_0", self.cfg, strides=(2, 2), padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv: [B,H,W,C] → [B,2H,2W,C]."""

    cfg: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "Conv_0", self.cfg)(x)


class DownLevel(nn.Module):
    """Encoder level `level`: `num_res_blocks` ResnetBlocks to hidden·mult[level] channels, then ÷2 (not the last)."""

    cfg: Any
    level: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.cfg.hidden_channels * self.cfg.channel_mult[self.level]
        for i in range(self.cfg.num_res_blocks):
            x = ResnetBlock(self.cfg, out, name=f"ResnetBlock_{i}")(x)
        if self.level != len(self.cfg.channel_mult) - 1:
            x = Downsample(self.cfg, name="Downsample_0")(x)
        return x


class UpLevel(nn.Module):
    """Decoder level `level`: `num_res_blocks + 1` ResnetBlocks to hidden·mult[level] channels, then ×2 (not at 0)."""

    cfg: Any
    level: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.cfg.hidden_channels * self.cfg.channel_mult[self.level]
        for i in range(self.cfg.num_res_blocks + 1):
            x = ResnetBlock(self.cfg, out, name=f"ResnetBlock_{i}")(x)
        if self.level != 0:
            x = Upsample(self.cfg, name="Upsample_0")(x)
        return x


class MidBlock(nn.Module):
    """Two channel-preserving ResnetBlocks (LWM's mid block without attention)."""

    cfg: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock(self.cfg, name="ResnetBlock_0")(x)
        return ResnetBlock(self.cfg, name="ResnetBlock_1")(x)


class Encoder(nn.Module):
    """Pixels [B,H,W,3] in [-1,1] → features [B,H/f,W/f,z_channels], f = 2^(len(channel_mult)-1)."""

    cfg: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = _conv(cfg.hidden_channels, 3, "Conv_0", cfg)(x.astype(cfg.compute_dtype))
        for level in range(len(cfg.channel_mult)):
            h = DownLevel(cfg, level, name=f"DownsamplingBlock_{level}")(h)
        h = MidBlock(cfg, name="MidBlock_0")(h)
        h = nn.silu(_norm("GroupNorm_0", cfg)(h))
        return _conv(cfg.z_channels, 3, "Conv_1", cfg)(h)


class Decoder(nn.Module):
    """Features [B,h,w,z_channels] → pixels [B,h·f,w·f,3] (unclipped; ≈[-1,1] after training).

    The up levels run from the deepest (level n-1) to level 0 and are named in that call order, as in LWM:
    `UpsamplingBlock_k` is level n-1-k.
    """

    cfg: Any

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.cfg
        n = len(cfg.channel_mult)
        h = _conv(cfg.hidden_channels * cfg.channel_mult[-1], 3, "Conv_0", cfg)(z.astype(cfg.compute_dtype))
        h = MidBlock(cfg, name="MidBlock_0")(h)
        for k, level in enumerate(reversed(range(n))):
            h = UpLevel(cfg, level, name=f"UpsamplingBlock_{k}")(h)
        h = nn.silu(_norm("GroupNorm_0", cfg)(h))
        return _conv(cfg.out_channels, 3, "Conv_1", cfg)(h)
