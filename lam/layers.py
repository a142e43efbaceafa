"""Transformer building blocks of the LAM (Flax linen): cosine attention, continuous position bias, temporal RoPE,
PEG, GEGLU feed-forward, FiLM conditioning, and the factorized spatial / temporal / spatio-temporal blocks.

Token layout everywhere: x float[B, T, h, w, D] (T frames of an h×w patch grid). Spatial attention mixes the h·w tokens
of one frame (plus optional extra tokens), temporal attention mixes the T frames of one grid location.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_SMALL_ATTN = 16  # query × key counts up to this use broadcast products instead of a dot


def layer_norm(name: str | None = None) -> nn.LayerNorm:
    """Bias-free LayerNorm (as in the lineage)."""
    return nn.LayerNorm(use_bias=False, name=name)


def rope(x: Array, positions: Array, theta: float = 10000.0) -> Array:
    """Rotary embedding over the last dim of x float[..., N, Dh] at integer positions int[N] (half-split layout)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
    ang = positions.astype(jnp.float32)[:, None] * freqs[None, :]
    cos, sin = jnp.cos(ang).astype(x.dtype), jnp.sin(ang).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class ContinuousPositionBias(nn.Module):
    """Attention bias float[heads, h·w, h·w] from an MLP on sign·log1p of relative 2-D offsets of cell centres."""

    heads: int
    hidden: int = 64

    @nn.compact
    def __call__(self, h: int, w: int) -> Array:
        ys, xs = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
        pos = jnp.stack([ys.ravel(), xs.ravel()], -1)  # [N, 2] in [0, 1]
        rel = pos[:, None, :] - pos[None, :, :]
        rel = jnp.sign(rel) * jnp.log1p(jnp.abs(rel) * max(h, w))
        y = nn.leaky_relu(nn.Dense(self.hidden)(rel), 0.1)
        y = nn.leaky_relu(nn.Dense(self.hidden)(y), 0.1)
        return jnp.moveaxis(nn.Dense(self.heads)(y), -1, 0)


class Attention(nn.Module):
    """Multi-head attention over x float[..., N, D] (context float[..., M, D] for cross-attention).

    cosine: L2-normalised q/k with learned per-dim scales and a fixed logit scale of 8; otherwise 1/sqrt(Dh).
    bias: additive float[heads, N, M]; positions: int[N] for RoPE (self-attention only); causal: lower-triangular.
    """

    heads: int
    dim_head: int
    cosine: bool = True
    null_kv: int = 0

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None, *, bias: Array | None = None,
                 positions: Array | None = None, causal: bool = False) -> Array:
        d, inner = x.shape[-1], self.heads * self.dim_head
        x = layer_norm("norm")(x)
        ctx = x if context is None else layer_norm("context_norm")(context)
        q = nn.Dense(inner, use_bias=False, name="to_q")(x)
        kv = nn.Dense(2 * inner, use_bias=False, name="to_kv")(ctx)
        k, v = jnp.split(kv, 2, axis=-1)
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, self.dim_head)
        q, k, v = split(q), split(k), split(v)  # [..., N, H, Dh]
        if self.null_kv:
            nkv = self.param("null_kv", nn.initializers.normal(1.0), (2, self.null_kv, self.heads, self.dim_head))
            bshape = k.shape[:-3]
            k = jnp.concatenate([jnp.broadcast_to(nkv[0], (*bshape, *nkv.shape[1:])), k], axis=-3)
            v = jnp.concatenate([jnp.broadcast_to(nkv[1], (*bshape, *nkv.shape[1:])), v], axis=-3)
        if positions is not None:
            q = jnp.swapaxes(rope(jnp.swapaxes(q, -2, -3), positions), -2, -3)
            k = jnp.swapaxes(rope(jnp.swapaxes(k, -2, -3), positions), -2, -3)
        if self.cosine:
            l2 = lambda t: t * jax.lax.rsqrt(jnp.sum(t * t, -1, keepdims=True) + 1e-6)
            q = l2(q) * self.param("q_scale", nn.initializers.ones, (self.dim_head,))
            k = l2(k) * self.param("k_scale", nn.initializers.ones, (self.dim_head,))
            scale = 8.0
        else:
            scale = 1.0 / math.sqrt(self.dim_head)
        small = q.shape[-3] * k.shape[-3] <= _SMALL_ATTN  # e.g. LAPA's 2-frame temporal attention
        if small:  # broadcast multiply-sum: XLA's CPU dot is very slow on thousands of 2×2 products
            logits = jnp.moveaxis(jnp.sum(q[..., :, None, :, :] * k[..., None, :, :, :], -1), -1, -3)
        else:
            logits = jnp.einsum("...nhd,...mhd->...hnm", q, k)
        logits = logits.astype(jnp.float32) * scale
        if bias is not None:
            if self.null_kv:
                bias = jnp.pad(bias, ((0, 0), (0, 0), (self.null_kv, 0)))
            logits = logits + bias
        if causal:
            n, m = logits.shape[-2:]
            logits = jnp.where(jnp.tril(jnp.ones((n, m), bool), m - n), logits, -1e30)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        if small:
            out = jnp.sum(jnp.moveaxis(probs, -3, -1)[..., None] * v[..., None, :, :, :], -3)
        else:
            out = jnp.einsum("...hnm,...mhd->...nhd", probs, v)
        out = out.reshape(*x.shape[:-1], inner)
        return nn.Dense(d, use_bias=False, name="to_out")(out)


class GEGLU(nn.Module):
    """LayerNorm → Linear(D → 2·F) → GELU gate → Linear(F → D), no biases."""

    mult: float = 4.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        f = int(self.mult * 2 / 3 * d)
        a, g = jnp.split(nn.Dense(2 * f, use_bias=False)(layer_norm()(x)), 2, axis=-1)
        return nn.Dense(d, use_bias=False)(a * nn.gelu(g))


class PEG(nn.Module):
    """Position-generating depthwise 3×3×3 conv over x float[B, T, h, w, D] (residual added by the caller).

    causal: the time axis is padded (2, 0) so frame t sees only frames <= t; otherwise (1, 1). Written as 27 shifted
    multiply-adds (XLA's grouped conv3d is very slow on CPU); same parameters as a depthwise conv."""

    causal: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(1.0 / math.sqrt(27)), (3, 3, 3, d))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        t, h, w = x.shape[1:4]
        pad_t = (2, 0) if self.causal else (1, 1)
        xp = jnp.pad(x, ((0, 0), pad_t, (1, 1), (1, 1), (0, 0)))
        views = jnp.stack([xp[:, a:a + t, b:b + h, c:c + w] for a in range(3) for b in range(3) for c in range(3)], -2)
        return jnp.einsum("...kd,kd->...d", views, kernel.reshape(27, d)) + bias


class FiLM(nn.Module):
    """x + MLP(LN(x)·(1 + α) + β) with (α, β) from a zero-initialised linear map of cond float[B, T, C]."""

    @nn.compact
    def __call__(self, x: Array, cond: Array) -> Array:
        d = x.shape[-1]
        ab = nn.Dense(2 * d, kernel_init=nn.initializers.zeros)(cond)
        alpha, beta = jnp.split(ab, 2, axis=-1)
        expand = (slice(None), slice(None)) + (None,) * (x.ndim - 3)
        y = layer_norm()(x) * (1 + alpha[expand]) + beta[expand]
        return x + nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(y)))


class STBlock(nn.Module):
    """One layer over x float[B, T, h, w, D] (+ extra float[B, T, E, D] spatial tokens).

    Order: FiLM (if cond) → PEG → temporal attention (RoPE, optional causal) → spatial attention (continuous position
    bias, extra tokens appended, optional cross-attention to `context` float[B, T, M, D]) → GEGLU. Any of the two
    attentions can be switched off, which gives the purely spatial / purely temporal blocks of the LAPA encoder.
    """

    heads: int
    dim_head: int
    temporal: bool = True
    spatial: bool = True
    causal: bool = False
    peg: bool = True
    cross: bool = False
    film: bool = False
    cosine: bool = True
    cpb_hidden: int = 64
    ff_mult: float = 4.0

    @nn.compact
    def __call__(self, x: Array, extra: Array | None = None, *, context: Array | None = None,
                 cond: Array | None = None) -> tuple[Array, Array | None]:
        b, t, h, w, d = x.shape
        if self.film:
            x = FiLM(name="film")(x, cond)
            if extra is not None:
                extra = FiLM(name="film_extra")(extra, cond)
        if self.peg:
            x = x + PEG(causal=self.causal, name="peg")(x)
        if self.temporal:
            xt = jnp.moveaxis(x.reshape(b, t, h * w, d), 1, 2)  # [B, hw, T, D]
            attn = Attention(self.heads, self.dim_head, cosine=self.cosine, name="temporal_attn")
            xt = xt + attn(xt, positions=jnp.arange(t), causal=self.causal)
            x = jnp.moveaxis(xt, 2, 1).reshape(b, t, h, w, d)
            if extra is not None:
                xe = jnp.moveaxis(extra, 1, 2)
                xe = xe + attn(xe, positions=jnp.arange(t), causal=self.causal)
                extra = jnp.moveaxis(xe, 2, 1)
        if self.spatial:
            xs = x.reshape(b, t, h * w, d)
            n_extra = 0 if extra is None else extra.shape[2]
            if extra is not None:
                xs = jnp.concatenate([xs, extra], axis=2)
            bias = ContinuousPositionBias(self.heads, self.cpb_hidden, name="cpb")(h, w)
            bias = jnp.pad(bias, ((0, 0), (0, n_extra), (0, n_extra)))
            xs = xs + Attention(self.heads, self.dim_head, cosine=self.cosine, name="spatial_attn")(xs, bias=bias)
            if self.cross:
                xs = xs + Attention(self.heads, self.dim_head, cosine=self.cosine, null_kv=2,
                                    name="cross_attn")(xs, context)
            xs = xs + GEGLU(self.ff_mult, name="ff")(xs)
            x = xs[:, :, : h * w].reshape(b, t, h, w, d)
            extra = None if extra is None else xs[:, :, h * w:]
        else:
            x = x + GEGLU(self.ff_mult, name="ff")(x)
        return x, extra


def patchify(x: Array, p: int) -> Array:
    """float[B, T, H, W, C] → float[B, T, H/p, W/p, p·p·C]."""
    b, t, hh, ww, c = x.shape
    if hh % p or ww % p:
        raise ValueError(f"image size {hh}x{ww} is not divisible by patch size {p}")
    x = x.reshape(b, t, hh // p, p, ww // p, p, c)
    return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, hh // p, ww // p, p * p * c)


def unpatchify(x: Array, p: int, c: int) -> Array:
    """float[B, T, h, w, p·p·C] → float[B, T, h·p, w·p, C]."""
    b, t, h, w, _ = x.shape
    return x.reshape(b, t, h, w, p, p, c).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h * p, w * p, c)


def stack(blocks: list[Any], x: Array, extra: Array | None = None, **kw: Any) -> tuple[Array, Array | None]:
    """Runs blocks in order."""
    for blk in blocks:
        x, extra = blk(x, extra, **kw)
    return x, extra
