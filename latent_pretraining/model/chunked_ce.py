"""Output head + cross-entropy over chunks of positions, rematerialized: [B, n, V] f32 logits never exist at once.

The plain path computes ``logits = hidden @ kernel`` for every scored position (f32 ``[B, n, V]``: 4 x 512 x 32000 x
4 bytes = 262 MB for the benchmark config) and autodiff keeps them (plus the softmax) for the backward pass. Here the
positions are split into chunks of ``chunk``; each chunk's logits are computed, reduced to per-token NLL / hit, and
dropped. ``jax.checkpoint`` on the chunk makes the backward pass recompute that chunk's logits instead of storing
them, so peak memory for the head is ``B x chunk x V`` and the extra cost is one more head matmul per chunk.

Numerically the same as ``log_softmax`` + gather on full logits (same matmul dtype and f32 accumulation), so a
config switch (``LlamaConfig.loss_chunk``; 0 = plain) changes memory and speed, not results.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def head_logits(hidden: jax.Array, kernel: jax.Array, compute_dtype: Any) -> jax.Array:
    """``hidden [..., D] @ kernel [D, V]`` with inputs in ``compute_dtype``, accumulated and returned in float32.

    The same product as ``llama_layers.Linear`` / ``Embed.attend`` with ``out_dtype=float32``."""
    return jax.lax.dot_general(
        hidden.astype(compute_dtype),
        kernel.astype(compute_dtype),
        (((hidden.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )


def _nll_and_hit(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """f32 ``[..., V]`` logits, int ``[...]`` targets -> (NLL f32 ``[...]``, argmax == target bool ``[...]``)."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked, jnp.argmax(logits, axis=-1) == targets


def token_nll(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, chunk: int = 0, compute_dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL and hits of the head ``kernel`` at every position of ``hidden``.

    Args:
      hidden: ``[B, n, D]`` hidden states at the scored positions (after the final norm).
      kernel: ``[D, V]`` head weights (a tied embedding table is passed transposed, ``embedding.T``).
      targets: ``[B, n]`` int target ids in ``[0, V)``.
      chunk: positions per chunk; 0 (or >= n) computes all logits at once (the plain path). Need not divide n.
      compute_dtype: matmul input dtype (the model's compute dtype); accumulation is float32.

    Returns:
      ``nll f32[B, n]`` and ``hit bool[B, n]`` (argmax of the logits equals the target; not differentiated).
    """
    if hidden.ndim != 3 or kernel.ndim != 2 or hidden.shape[-1] != kernel.shape[0]:
        raise ValueError(f"token_nll needs hidden [B, n, D] and kernel [D, V], got {hidden.shape} and {kernel.shape}")
    if targets.shape != hidden.shape[:2]:
        raise ValueError(f"targets must be [B, n] = {hidden.shape[:2]}, got {targets.shape}")
    if chunk < 0:
        raise ValueError(f"loss chunk must be >= 0 (0 = off), got {chunk}")
    b, n, d = hidden.shape
    if chunk == 0 or chunk >= n:
        return _nll_and_hit(head_logits(hidden, kernel, compute_dtype), targets)
    pad = -n % chunk
    m = (n + pad) // chunk
    # Padded positions get target 0 and are sliced off below; their (finite) NLL never reaches the loss.
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, m, chunk, d).swapaxes(0, 1)  # [m, B, c, D]
    t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, m, chunk).swapaxes(0, 1)  # [m, B, c]

    @jax.checkpoint
    def one(w: jax.Array, h_c: jax.Array, t_c: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _nll_and_hit(head_logits(h_c, w, compute_dtype), t_c)

    # lax.map = scan: one chunk's logits live at a time; the kernel gradient is summed over chunks by the scan.
    nll, hit = jax.lax.map(lambda xs: one(kernel, *xs), (h, t))
    nll = nll.swapaxes(0, 1).reshape(b, n + pad)[:, :n]
    hit = hit.swapaxes(0, 1).reshape(b, n + pad)[:, :n]
    return nll, hit


def masked_mean_loss(nll: jax.Array, weights: jax.Array) -> jax.Array:
    """``nll f32[B, n]``, ``weights [B, n]`` -> per-row mean over weighted targets, then mean over rows with any."""
    w = weights.astype(jnp.float32)
    count = jnp.sum(w, axis=1)
    per_row = jnp.sum(nll * w, axis=1) / jnp.maximum(count, 1.0)
    rows = (count > 0).astype(jnp.float32)
    return jnp.sum(per_row * rows) / jnp.maximum(jnp.sum(rows), 1.0)


def lm_loss(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, chunk: int = 0, compute_dtype: Any = jnp.float32
) -> jax.Array:
    """Token-mean next-token loss of a plain LM: ``hidden [B, T, D]``, ``kernel [D, V]``, ``targets [B, T]``."""
    nll, _ = token_nll(hidden, kernel, targets, chunk=chunk, compute_dtype=compute_dtype)
    return jnp.mean(nll)
