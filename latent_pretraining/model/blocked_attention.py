"""Attention with scores kept in key blocks (online softmax, flash-style, pure JAX) for every mask kind of the model.

The XLA path of ``jax.nn.dot_product_attention`` builds full ``[B, N, T, S]`` f32 scores, a mask of the same shape,
the softmax, and keeps them for the backward pass. Here keys are visited in blocks of ``block`` slots with a running
max ``m``, running sum ``l`` and unnormalised output ``acc`` per query (the online softmax); the mask of each block
is rebuilt from O(T + S) facts instead of being passed as a ``[B, 1, T, S]`` array:

- causality over slots: query slot ``offset + i`` sees key slots ``<= offset + i``;
- key validity ``key_valid [B, S]`` (padding; with a cache, the slots written so far);
- bidirectional blocks: ``q_block [B, T]`` / ``k_block [B, S]`` ids; equal ids > 0 see each other both ways.

So causal, padding, block-bidirectional and KV-cache attention all take this path (``MaskSpec`` carries the parts).
Each key-block step is ``jax.checkpoint``-ed: the backward pass recomputes one block's scores at a time instead of
storing them. With purely causal masks and no cache the queries are also split into chunks of ``block`` that stop at
their last visible key block (half the work at long T).

A query that may see no key at all (a padding query before the first real token) gets output 0, where the XLA path
averages all values uniformly; both are garbage that no loss reads (padding positions carry no targets).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_NEG = -1e30  # "minus infinity" that keeps exp(m_old - m_new) finite while no key has been seen


def _block_step(
    carry: tuple[jax.Array, jax.Array, jax.Array],
    xs: tuple[jax.Array, ...],
    q: jax.Array,
    q_slot: jax.Array,
    q_block: jax.Array | None,
    scale: float,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
    """One key block: q ``[B,T,K,G,H]``; xs = (k, v ``[B,c,K,H]``, slots ``[c]``, valid, k_block ``[B,c]``)."""
    m, denom, acc = carry  # [B,K,G,T], [B,K,G,T], [B,K,G,T,H] (f32)
    k, v, k_slot, valid, k_block = xs
    s = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    allowed = k_slot[None, None, :] <= q_slot[None, :, None]  # [1, T, c]
    if q_block is not None:
        allowed = allowed | ((q_block[:, :, None] == k_block[:, None, :]) & (q_block[:, :, None] > 0))
    allowed = (allowed & valid[:, None, :])[:, None, None]  # [B, 1, 1, T, c]
    s = jnp.where(allowed, s, _NEG)
    m_new = jnp.maximum(m, s.max(axis=-1))
    p = jnp.where(allowed, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    denom = denom * corr + p.sum(axis=-1)
    pv = jnp.einsum("bkgts,bskh->bkgth", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (m_new, denom, acc * corr[..., None] + pv), None


def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_slot: jax.Array,
    key_valid: jax.Array,
    q_block: jax.Array | None,
    k_block: jax.Array | None,
    block: int,
) -> jax.Array:
    """All queries against keys ``[B,S,K,H]`` in blocks of ``block``; q ``[B,T,N,H]`` -> ``[B,T,N,H]``."""
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    pad = -s % block
    nb = (s + pad) // block
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        key_valid = jnp.pad(key_valid, ((0, 0), (0, pad)))  # padded slots are invalid keys
        if k_block is not None:
            k_block = jnp.pad(k_block, ((0, 0), (0, pad)))
    if k_block is None:
        k_block = jnp.zeros((b, s + pad), jnp.int32)

    def blocks(x: jax.Array) -> jax.Array:  # [B, S', ...] -> [nb, B, block, ...]
        return jnp.moveaxis(x.reshape(b, nb, block, *x.shape[2:]), 1, 0)

    xs = (blocks(k), blocks(v), jnp.arange(s + pad, dtype=jnp.int32).reshape(nb, block), blocks(key_valid),
          blocks(k_block))
    qg = q.reshape(b, t, kh, g, h)
    step = jax.checkpoint(lambda c, x: _block_step(c, x, qg, q_slot, q_block, 1.0 / math.sqrt(h)))
    init = (
        jnp.full((b, kh, g, t), _NEG, jnp.float32),
        jnp.zeros((b, kh, g, t), jnp.float32),
        jnp.zeros((b, kh, g, t, h), jnp.float32),
    )
    (_, denom, acc), _ = jax.lax.scan(step, init, xs)
    out = acc / jnp.maximum(denom, 1e-30)[..., None]  # denom = 0 only for queries that see no key: output 0
    return jnp.moveaxis(out.reshape(b, n, t, h), 2, 1).astype(q.dtype)


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    block: int,
    key_valid: jax.Array | None = None,
    offset: jax.Array | int = 0,
    q_block: jax.Array | None = None,
    k_block: jax.Array | None = None,
    causal_self: bool = False,
) -> jax.Array:
    """Masked softmax attention, scores kept in key blocks; the same result as ``jax.nn.dot_product_attention``
    with the mask of ``attention.make_attention_mask`` (on queries that see at least one key).

    Args:
      q: ``[B, T, N, H]`` queries in slots ``offset .. offset + T - 1``.
      k, v: ``[B, S, K, H]`` keys/values of slots ``0 .. S-1`` (``N % K == 0``, grouped-query attention).
      block: key slots per block (> 0; need not divide S).
      key_valid: ``[B, S]`` bool, keys that may be attended at all (default: all).
      offset: slot of the first query (a KV cache's write index; 0 without a cache).
      q_block, k_block: ``[B, T]`` / ``[B, S]`` int bidirectional block ids (0 = none), both or neither.
      causal_self: the caller guarantees plain causal self-attention (offset 0, S = T, no blocks): query chunks
        then skip the key blocks after them. Static (a Python bool).
    """
    b, t, n, h = q.shape
    s = k.shape[1]
    if block <= 0:
        raise ValueError(f"attention key block must be > 0, got {block}")
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != h or n % k.shape[2]:
        raise ValueError(f"blocked_attention needs q [B,T,N,H], k = v [B,S,K,H] with N % K == 0, got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if (q_block is None) != (k_block is None):
        raise ValueError("blocked_attention needs both q_block [B, T] and k_block [B, S], or neither")
    if key_valid is None:
        key_valid = jnp.ones((b, s), bool)
    q_slot = jnp.asarray(offset, jnp.int32) + jnp.arange(t, dtype=jnp.int32)
    if causal_self and (q_block is not None or s != t):
        raise ValueError(f"causal_self attention needs S = T and no block ids, got T={t}, S={s}")
    if not causal_self or t <= block:
        return _attend(q, k, v, q_slot, key_valid.astype(bool), q_block, k_block, block)
    # Causal self-attention: query chunk [lo, hi) only needs keys [0, hi).
    outs = []
    for lo in range(0, t, block):
        hi = min(lo + block, t)
        outs.append(_attend(q[:, lo:hi], k[:, :hi], v[:, :hi], q_slot[lo:hi], key_valid[:, :hi].astype(bool),
                            None, None, block))
    return jnp.concatenate(outs, axis=1)
