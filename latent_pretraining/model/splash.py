"""The model's attention masks on the Pallas TPU splash-attention kernel (``jax.experimental.pallas.ops.tpu``).

Self-attention only (T = S, no KV cache), T a multiple of 128. How each mask kind maps onto the kernel:

- causal: a static ``CausalMask`` (one head, broadcast to all), processed once on the host; fully masked tiles are
  skipped.
- padding (key validity ``[B, T]``): the same causal mask plus segment ids = validity for queries *and* keys. Real
  queries then see only real keys; a padding query sees only padding keys, at least itself, so no row of the
  kernel's mask is empty (an empty row has no defined softmax in the kernel). Padding outputs are garbage either
  way (the XLA path averages all values there); no loss reads them.
- bidirectional blocks (``block_ids [B, T]``, equal ids > 0 see each other both ways): a per-row *dynamic* mask
  ``causal | same block`` built on device inside ``vmap`` (the kernel skips tiles that are all False), ANDed with
  the validity segment ids as above.

Grouped-query attention runs natively (the kernel maps each query head to ``head // (N / K)``); one kv head uses
the MQA kernel. The kernel does not scale the logits, so the queries are scaled by ``1 / sqrt(H)`` first. Off TPU
the kernel runs in Pallas interpret mode (slow; for tests). Under a mesh (``jax.set_mesh``) the call runs inside
``shard_map`` over batch and heads (XLA cannot partition a Pallas call; see ``_on_mesh``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

MAX_BLOCK = 512  # the largest tile tried; bigger tiles are faster on TPU as long as they fit VMEM


def block_size(t: int, max_block: int = MAX_BLOCK) -> int:
    """The largest tile <= ``max_block`` that is a multiple of 128 and divides T (T must be a multiple of 128)."""
    if t % 128:
        raise ValueError(f"splash attention needs a sequence length that is a multiple of 128, got {t}")
    return max(b for b in range(128, min(max_block, t) + 1, 128) if t % b == 0)


def _sizes(block: int) -> sa.BlockSizes:
    return sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                         block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)


@functools.lru_cache(maxsize=16)
def _causal_kernel(t: int, block: int, mqa: bool, interpret: bool) -> sa.splash_attention_kernel.SplashAttentionKernel:
    make = sa.make_splash_mqa_single_device if mqa else sa.make_splash_mha_single_device
    return make(sa.MultiHeadMask([sa.CausalMask((t, t))]), block_sizes=_sizes(block), interpret=interpret)


def _dynamic_kernel(mask: jax.Array, block: int, mqa: bool,
                    interpret: bool) -> sa.splash_attention_kernel.SplashAttentionKernel:
    """A kernel for a traced ``[1, T, T]`` bool mask (built inside jit/vmap)."""
    make = sa.make_splash_mqa_single_device if mqa else sa.make_splash_mha_single_device
    kern = make(mask, block_sizes=_sizes(block), interpret=interpret)

    # The constructor turns every MaskInfo field into an array, the ``is_dynamic_mask`` flag included, which is a
    # tracer under jit and then breaks the kernel's ``if`` on it: put the Python bool back.
    def fix(info):
        return None if info is None else info._replace(is_dynamic_mask=True)

    return sa.splash_attention_kernel.SplashAttentionKernel(
        fix(kern.fwd_mask_info), fix(kern.dq_mask_info), fix(kern.dkv_mask_info), **kern.kwargs)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, key_valid: jax.Array | None = None,
                     block_ids: jax.Array | None = None, interpret: bool = False,
                     max_block: int | None = None) -> jax.Array:
    """Causal self-attention with optional padding and bidirectional blocks on the splash kernel.

    Args:
      q: ``[B, T, N, H]``; k, v: ``[B, T, K, H]`` (``N % K == 0``).
      key_valid: ``[B, T]`` bool real tokens (None: all real).
      block_ids: ``[B, T]`` int bidirectional blocks (0 = none; None: no blocks).
      interpret: run the Pallas kernel in interpret mode (any backend).
      max_block: largest tile (a multiple of 128; default ``MAX_BLOCK``, read at call time).

    Returns:
      ``[B, T, N, H]`` in q's dtype; equal to the XLA path on every query that sees at least one real key.
    """
    args = [a for a in (key_valid, block_ids) if a is not None]
    return _on_mesh(functools.partial(_splash, has_valid=key_valid is not None, has_blocks=block_ids is not None,
                                      interpret=interpret, max_block=MAX_BLOCK if max_block is None else max_block),
                    q, k, v, *args)


def _on_mesh(fn, q: jax.Array, k: jax.Array, v: jax.Array, *rows: jax.Array) -> jax.Array:
    """``fn(q, k, v, *rows)`` per device under ``shard_map`` when a mesh is set (``jax.set_mesh``), else directly.

    XLA cannot partition a Pallas call, so each device runs the kernel on its slice: batch as the activations'
    "batch" rule says, heads as "act_heads" / "act_kv_heads" say when both split alike (then each shard's query
    heads map onto its own kv heads), else heads unsplit. The sequence is never split (the kernel needs all keys).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, *rows)
    from latent_pretraining.training.sharding import logical_to_spec

    qs = logical_to_spec(q.shape, ("batch", None, "act_heads", None), mesh)
    ks = logical_to_spec(k.shape, ("batch", None, "act_kv_heads", None), mesh)
    if qs[2] != ks[2]:
        qs, ks = P(qs[0], None, None, None), P(ks[0], None, None, None)
    specs = (qs, ks, ks, *(P(qs[0], None) for _ in rows))
    return jax.shard_map(fn, in_specs=specs, out_specs=qs, check_vma=False)(q, k, v, *rows)


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, *rows: jax.Array, has_valid: bool, has_blocks: bool,
            interpret: bool, max_block: int) -> jax.Array:
    """``splash_attention`` on one device's arrays; ``rows`` = (key_valid if has_valid, block_ids if has_blocks)."""
    key_valid = rows[0] if has_valid else None
    block_ids = rows[-1] if has_blocks else None
    b, t, _, h = q.shape
    mqa = k.shape[2] == 1
    block = block_size(t, max_block)
    qt = jnp.swapaxes(q * jnp.asarray(h ** -0.5, q.dtype), 1, 2)  # [B, N, T, H]
    kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, T, H]
    if mqa:
        kt, vt = kt[:, 0], vt[:, 0]  # [B, T, H]
    seg = None if key_valid is None else key_valid.astype(jnp.int32)
    if block_ids is None:
        kern = _causal_kernel(t, block, mqa, interpret)

        def row(qi, ki, vi, si, bi):
            return kern(qi, ki, vi, segment_ids=None if si is None else sa.SegmentIds(si, si))
    else:
        if seg is None:
            seg = jnp.ones((b, t), jnp.int32)
        causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]

        def row(qi, ki, vi, si, bi):
            same = (bi[:, None] == bi[None, :]) & (bi[:, None] > 0)
            kern = _dynamic_kernel((causal | same)[None], block, mqa, interpret)
            return kern(qi, ki, vi, segment_ids=sa.SegmentIds(si, si))

    out = jax.vmap(row)(qt, kt, vt, seg, block_ids)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
