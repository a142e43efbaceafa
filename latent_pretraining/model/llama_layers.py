"""Building blocks of the LLaMA backbone: bias-free linear, embedding, RMSNorm, rotary embedding, SwiGLU MLP.

Shape letters: B batch, T query length, S key length, D hidden, F ffn hidden, N heads, K kv heads, H head dim, V vocab.
Every parameter carries logical axis names (see ``latent_pretraining.training.sharding``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from latent_pretraining.model.llama_config import LlamaConfig
from latent_pretraining.training.sharding import with_logical_constraint


def _matmul(x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    """``x @ w`` over the last axis of x, inputs in ``dtype``, accumulated (and returned) in float32."""
    return jax.lax.dot_general(
        x.astype(dtype), w.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )


class Linear(nn.Module):
    """Dense layer with kernel ``[in, out]`` named ``kernel`` (EasyLM/LWM layout), bias-free unless ``use_bias``
    (then ``bias [out]``, zeros, logical name ``names[1]``; ViPRA's action encoder and velocity head).

    ``out_dtype`` defaults to the compute dtype; the matmul always accumulates in float32.
    """

    features: int
    names: tuple[str | None, str | None]
    config: LlamaConfig
    out_dtype: Any = None
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), self.names)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), cfg.params_dtype)
        y = _matmul(x, kernel, cfg.compute_dtype)
        if self.use_bias:
            b_init = nn.with_logical_partitioning(nn.initializers.zeros, (self.names[1],))
            y = y + self.param("bias", b_init, (self.features,), cfg.params_dtype).astype(jnp.float32)
        return y.astype(self.out_dtype or cfg.compute_dtype)


class Embed(nn.Module):
    """Token embedding table ``embedding [V, D]``; ``attend`` gives tied-head logits ``[..., V]`` in float32."""

    num_embeddings: int
    config: LlamaConfig

    def setup(self) -> None:
        cfg = self.config
        init = nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), ("vocab", "embed"))
        self.embedding = self.param("embedding", init, (self.num_embeddings, cfg.hidden_size), cfg.params_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids ``[B, T]`` int -> ``[B, T, D]`` in the compute dtype."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.config.compute_dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """``[B, T, D]`` -> logits ``[B, T, V]`` float32 against the (tied) table."""
        return _matmul(x, self.embedding.T, self.config.compute_dtype)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast to the compute dtype, times a learned ``kernel [D]`` (init ones)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
        scale = self.param("kernel", init, (x.shape[-1],), cfg.params_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.rms_eps)
        return y.astype(cfg.compute_dtype) * scale.astype(cfg.compute_dtype)


def rope_sin_cos(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Rotary angles for integer ``positions [B, T]`` -> ``(sin, cos)``, each ``[B, T, H/2]`` float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotates ``x [B, T, N, H]`` by position; pairs are interleaved (2i, 2i+1) as in Meta/LWM checkpoints.

    HF checkpoints use rotate-half pairs (i, i + H/2); the converter permutes wq/wk rows so both agree exactly.
    """
    shape = x.shape
    x2 = x.astype(jnp.float32).reshape(*shape[:-1], shape[-1] // 2, 2)
    x0, x1 = x2[..., 0], x2[..., 1]
    s, c = sin[:, :, None, :], cos[:, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(shape).astype(x.dtype)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """``silu(gate) * up`` (any shape, computed in the inputs' dtype) whose backward keeps only ``gate`` and ``up``.

    Plain autodiff of ``nn.silu(gate) * up`` kept four [B, T, F] arrays per layer for the backward (read from the
    compiled D512 train step); this keeps two and recomputes the sigmoid there. The forward is the same expression.
    """
    return nn.silu(gate) * up


def _swiglu_fwd(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return nn.silu(gate) * up, (gate, up)


def _swiglu_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    gate, up = res
    s = jax.nn.sigmoid(gate)
    # d silu(x) / dx = s + x s (1 - s) = s (1 + x (1 - s))
    return g * up * (s * (1 + gate * (1 - s))), g * (gate * s)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class MLP(nn.Module):
    """SwiGLU feed-forward: ``w2(silu(w1 x) * w3 x)``, ``[B, T, D] -> [B, T, D]``."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        gate = Linear(cfg.intermediate_size, ("embed", "mlp"), cfg, name="w1")(x)
        up = Linear(cfg.intermediate_size, ("embed", "mlp"), cfg, name="w3")(x)
        h = with_logical_constraint(swiglu(gate, up), ("batch", "length", "act_mlp"))
        return Linear(cfg.hidden_size, ("mlp", "embed"), cfg, name="w2")(h)
