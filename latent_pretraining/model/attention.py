"""LLaMA self-attention (GQA, RoPE), attention masks and the KV cache; the kernels are in ``attention_kernels.py``.

Masks are boolean, True = may attend, shaped ``[B, 1, T, S]``. They are built from
- causality over *slots* (query slot ``offset + i`` sees key slots ``<= offset + i``),
- key validity (padding; with a cache, the slots written so far),
- optional ``block_ids [B, T]``: tokens of the current call with the same id > 0 see each other in both directions
  (a bidirectional action chunk inside a causal sequence),
- or a caller-supplied full mask ``[B, 1|N, T, S]`` that replaces causality and blocks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from latent_pretraining.model.attention_kernels import attend
from latent_pretraining.model.llama_config import LlamaConfig
from latent_pretraining.model.llama_layers import Linear, apply_rope
from latent_pretraining.training.sharding import with_logical_constraint

CACHE_NAMES = ("layers", "batch", "cache_length", "act_kv_heads", "head_dim")


@struct.dataclass
class KVCache:
    """Keys/values of all layers for incremental decoding.

    Attributes:
      k, v: ``[L, B, S, K, H]`` (L layers, S = cache capacity).
      valid: ``[B, S]`` bool, key slots holding real (non-padding) tokens.
      index: ``[]`` int32, the next slot to write (shared by the batch).
      next_position: ``[B]`` int32, the position id the next real token of each row gets.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array

    @classmethod
    def init(cls, config: LlamaConfig, batch_size: int, capacity: int, dtype: jnp.dtype | None = None) -> KVCache:
        """An empty cache for ``capacity`` slots (prompt + generated tokens)."""
        shape = (config.num_layers, batch_size, capacity, config.kv_heads, config.dim_per_head)
        dtype = dtype or config.compute_dtype
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch_size, capacity), bool),
            index=jnp.zeros((), jnp.int32),
            next_position=jnp.zeros((batch_size,), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def shardings(self, mesh: jax.sharding.Mesh) -> KVCache:
        """NamedShardings for this cache on ``mesh`` (batch over dp/fsdp, kv heads over tp), same structure."""
        from latent_pretraining.training.sharding import spec_for

        def named(x: jax.Array, names: tuple[str, ...] | None) -> jax.sharding.NamedSharding:
            spec = spec_for(x.shape, names, mesh) if names else jax.sharding.PartitionSpec()
            return jax.sharding.NamedSharding(mesh, spec)

        return KVCache(
            k=named(self.k, CACHE_NAMES),
            v=named(self.v, CACHE_NAMES),
            valid=named(self.valid, ("batch", "cache_length")),
            index=named(self.index, None),
            next_position=named(self.next_position, ("batch",)),
        )


@struct.dataclass
class MaskSpec:
    """An attention mask plus a static fact about it.

    Attributes:
      mask: ``[B, 1|N, T, S]`` bool, or None for plain causal attention over the current tokens (S = T).
      causal: True when no query can see a later slot (causal, padding); False with bidirectional blocks or a
        caller-supplied mask. Causal masks allow skipping the upper-triangle key blocks (``attention_q_chunk``).
      key_valid, offset, q_block, k_block: the facts ``mask`` was built from (``[B, S]`` bool, first query slot,
        ``[B, T]`` / ``[B, S]`` block ids), for ``blocked_attention`` (``attention_kv_block``), which rebuilds each
        key block's mask instead of reading ``[B, 1, T, S]``. ``has_parts`` False (a caller-supplied full mask):
        only the dense path applies.
    """

    mask: jax.Array | None
    causal: bool = struct.field(pytree_node=False, default=True)
    key_valid: jax.Array | None = None
    offset: jax.Array | int = 0
    q_block: jax.Array | None = None
    k_block: jax.Array | None = None
    has_parts: bool = struct.field(pytree_node=False, default=False)


def default_positions(attention_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """Position ids ``[B, T]``: ``start`` + running count of real tokens - 1 (padding repeats the previous id)."""
    am = attention_mask.astype(jnp.int32)
    start = jnp.asarray(start, jnp.int32)
    if start.ndim == 1:
        start = start[:, None]
    return start + jnp.maximum(jnp.cumsum(am, axis=1) - 1, 0)


def make_attention_mask(
    attention_mask: jax.Array,
    *,
    key_valid: jax.Array | None = None,
    offset: jax.Array | int = 0,
    block_ids: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask ``[B, 1, T, S]`` for queries in slots ``offset .. offset+T-1``.

    Args:
      attention_mask: ``[B, T]`` 1 for real query tokens (used as key validity when ``key_valid`` is None, S = T).
      key_valid: ``[B, S]`` validity of all key slots (cache case), already including the current tokens.
      offset: slot of the first query (the cache write index).
      block_ids: ``[B, T]`` int, bidirectional blocks among the current tokens (0 = none).
      mask: ``[B, 1|N, T, S]`` bool full mask replacing causality and blocks (still ANDed with key validity).
    """
    b, t = attention_mask.shape
    if key_valid is None:
        key_valid = attention_mask.astype(bool)
    s = key_valid.shape[1]
    if mask is not None:
        if mask.ndim != 4 or mask.shape[2] != t or mask.shape[3] != s:
            raise ValueError(f"attention mask must be [B, 1|N, {t}, {s}] (T queries, S key slots), got {mask.shape}")
        return mask.astype(bool) & key_valid[:, None, None, :]
    q_slot = jnp.asarray(offset, jnp.int32) + jnp.arange(t, dtype=jnp.int32)
    k_slot = jnp.arange(s, dtype=jnp.int32)
    allowed = k_slot[None, :] <= q_slot[:, None]  # [T, S]
    allowed = jnp.broadcast_to(allowed[None], (b, t, s))
    if block_ids is not None:
        k_block = key_block_ids(block_ids, s, offset)
        same = (block_ids[:, :, None] == k_block[:, None, :]) & (block_ids[:, :, None] > 0)
        allowed = allowed | same
    return (allowed & key_valid[:, None, :])[:, None]


def key_block_ids(block_ids: jax.Array, num_slots: int, offset: jax.Array | int = 0) -> jax.Array:
    """Block ids ``[B, T]`` of the current tokens placed at key slots ``offset ..``: ``[B, S]`` (0 elsewhere)."""
    b = block_ids.shape[0]
    return jax.lax.dynamic_update_slice(
        jnp.zeros((b, num_slots), jnp.int32), block_ids.astype(jnp.int32), (0, jnp.asarray(offset, jnp.int32))
    )


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with RoPE.

    ``__call__(x [B,T,D], sin, cos [B,T,H/2], mask: MaskSpec, kv | None, cache_index)``
    returns ``(out [B,T,D], new_kv)``. ``mask.mask=None`` means plain causal attention without padding (fast path);
    ``kv = (k, v)`` each ``[B, S, K, H]`` is this layer's cache, updated at ``cache_index`` and returned.
    """

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        sin: jax.Array,
        cos: jax.Array,
        mask: MaskSpec,
        kv: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.config
        b, t, _ = x.shape
        n, k_heads, hd = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        q = Linear(n * hd, ("embed", "heads"), cfg, name="wq")(x).reshape(b, t, n, hd)
        k = Linear(k_heads * hd, ("embed", "kv_heads"), cfg, name="wk")(x).reshape(b, t, k_heads, hd)
        v = Linear(k_heads * hd, ("embed", "kv_heads"), cfg, name="wv")(x).reshape(b, t, k_heads, hd)
        q = with_logical_constraint(apply_rope(q, sin, cos), ("batch", "length", "act_heads", "head_dim"))
        k = with_logical_constraint(apply_rope(k, sin, cos), ("batch", "length", "act_kv_heads", "head_dim"))
        v = with_logical_constraint(v, ("batch", "length", "act_kv_heads", "head_dim"))
        new_kv = None
        if kv is not None:
            if cache_index is None or mask.mask is None:
                raise ValueError("attention with a KV cache needs cache_index and an explicit mask")
            k_cache, v_cache = kv
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
            new_kv = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        # The kernel (cuDNN / splash / blocked / chunked / XLA) is picked at trace time from static facts:
        # model/attention_kernels.py (KERNELS, choose_kernel).
        out = attend(q, k, v, mask, impl=cfg.attention_impl, cache=kv is not None, q_chunk=cfg.attention_q_chunk,
                     kv_block=cfg.attention_kv_block)
        out = with_logical_constraint(out, ("batch", "length", "act_heads", "head_dim"))
        out = Linear(cfg.hidden_size, ("heads", "embed"), cfg, name="wo")(out.reshape(b, t, n * hd))
        return out, new_kv
