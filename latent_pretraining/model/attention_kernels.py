"""The attention kernels behind ``LlamaConfig.attention_impl`` and the one table that picks among them.

``KERNELS`` maps a kernel name to how it runs, which calls it can express (``fits``) and when ``attention_impl="auto"``
takes it (``auto``); ``choose_kernel`` walks the table at trace time with the static facts of one call
(``AttentionCase``: backend, dtype, mask kind, cache, lengths, head width, the CPU knobs):

| kernel  | what runs                                   | masks it expresses                  | "auto" takes it    |
|---------|---------------------------------------------|-------------------------------------|--------------------|
| cudnn   | cuDNN flash attention (``implementation=    | all: causal by ``is_causal``, the   | GPU, bf16/fp16, no |
|         | "cudnn"`` of ``jax.nn.dot_product_attention``) | rest as a mask (cuDNN adds it as a | cache, head dim %8 |
|         |                                             | bias); ``is_causal`` kept w/ padding | and <= 128         |
| splash  | Pallas TPU splash attention (``splash.py``; | causal, padding, bidirectional      | TPU                |
|         | interpret mode off TPU)                     | blocks; self-attn, T % 128, no cache |                    |
| blocked | online softmax over key blocks              | all but a caller-supplied mask      | kv_block > 0       |
| chunked | causal query chunks skipping later keys     | causal, padding; no cache           | q_chunk divides T  |
| xla     | ``jax.nn.dot_product_attention`` (XLA)      | all                                 | always (last row)  |

Mask kinds (``mask_kind``): "causal" = plain causal self-attention (``MaskSpec.mask`` None); "padding" = causal plus
key validity (and/or a KV cache); "block" = padding plus bidirectional blocks (``q_block``/``k_block``); "custom" =
a caller-supplied full mask (no parts). An explicit "cudnn" or "splash" is used whenever the kernel ``fits`` the call
(dtype/backend errors come from the kernel itself) and falls back to the portable kernels (blocked, chunked, xla, in
that order) otherwise, e.g. for KV-cache decoding with "splash"; "xla" means the portable kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latent_pretraining.model.blocked_attention import blocked_attention
from latent_pretraining.model.llama_config import ATTENTION_IMPLS

if TYPE_CHECKING:  # attention.py imports this module; the type is only needed for hints
    from latent_pretraining.model.attention import MaskSpec

MASK_KINDS = ("causal", "padding", "block", "custom")
SPLASH_MIN_BLOCK = 128  # the kernel's key blocks must be a multiple of 128 lanes (and so must T)


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    """Static facts of one attention call that decide the kernel (all known at trace time).

    Attributes:
      backend: ``jax.default_backend()``: "cpu", "gpu" or "tpu".
      dtype: the queries' dtype name ("float32", "bfloat16", ...).
      mask: one of ``MASK_KINDS``.
      cache: keys come from a KV cache (decoding / prefill with a cache).
      q_len, kv_len, head_dim: T, S and H.
      q_chunk, kv_block: ``LlamaConfig.attention_q_chunk`` / ``attention_kv_block`` (the CPU kernels' knobs).
    """

    backend: str
    dtype: str
    mask: str
    cache: bool
    q_len: int
    kv_len: int
    head_dim: int
    q_chunk: int = 0
    kv_block: int = 0


def mask_kind(mask: MaskSpec) -> str:
    """Which of ``MASK_KINDS`` a ``MaskSpec`` is (static: decided by which parts are present)."""
    if mask.mask is None:
        return "causal"
    if not mask.has_parts:
        return "custom"
    return "padding" if mask.q_block is None else "block"


class Kernel(NamedTuple):
    """One row of ``KERNELS``: ``run(q, k, v, mask, case) -> out``, ``fits(case)``, ``auto(case)``."""

    run: Callable[..., jax.Array]
    fits: Callable[[AttentionCase], bool]
    auto: Callable[[AttentionCase], bool]


def _xla(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, case: AttentionCase) -> jax.Array:
    m = mask.mask
    return jax.nn.dot_product_attention(q, k, v, mask=m, is_causal=m is None, implementation="xla")


def causal_chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, chunk: int) -> jax.Array:
    """Causal attention in query chunks of ``chunk`` that skip the key blocks after the chunk (~half the work).

    ``q [B,T,N,H]``, ``k, v [B,T,K,H]``, optional causal-style ``mask [B,1|N,T,T]`` -> ``[B,T,N,H]``. Each chunk
    is one XLA ``jax.nn.dot_product_attention`` call; worth it on CPU, where attention is memory bound.
    """
    t = q.shape[1]
    outs = []
    for lo in range(0, t, chunk):
        hi = lo + chunk
        m = jnp.asarray(np.arange(hi)[None, :] <= np.arange(lo, hi)[:, None])[None, None]
        if mask is not None:
            m = m & mask[:, :, lo:hi, :hi]
        outs.append(jax.nn.dot_product_attention(q[:, lo:hi], k[:, :hi], v[:, :hi], mask=m, implementation="xla"))
    return jnp.concatenate(outs, axis=1)


def _chunked(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, case: AttentionCase) -> jax.Array:
    return causal_chunked_attention(q, k, v, mask.mask, case.q_chunk)


def _blocked(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, case: AttentionCase) -> jax.Array:
    # The dense mask (if any) is left unused and dropped by XLA.
    return blocked_attention(q, k, v, block=case.kv_block, key_valid=mask.key_valid, offset=mask.offset,
                             q_block=mask.q_block, k_block=mask.k_block,
                             causal_self=not case.cache and case.mask in ("causal", "padding"))


def _cudnn(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, case: AttentionCase) -> jax.Array:
    # Plain causal: cuDNN's own causal mask, no bias. Otherwise the boolean [B, 1, T, S] mask becomes an additive
    # bias (JAX's cuDNN path converts it); is_causal is added when the mask is causal anyway (padding) so cuDNN
    # skips the upper-triangle tiles; never with a cache, whose query slots are offset from the key slots.
    causal = mask.mask is None or (mask.causal and not case.cache and case.q_len == case.kv_len)
    return jax.nn.dot_product_attention(q, k, v, mask=mask.mask, is_causal=causal, implementation="cudnn")


def _cudnn_auto(c: AttentionCase) -> bool:
    # cuDNN flash attention: half precision only; head dim a multiple of 8, <= 128 (256 needs Hopper, not checked
    # here); with a bias in training both lengths even. Decoding (cache) stays on the portable kernels.
    even = c.mask == "causal" or (c.q_len % 2 == 0 and c.kv_len % 2 == 0)
    return (c.backend == "gpu" and c.dtype in ("bfloat16", "float16") and not c.cache and c.head_dim % 8 == 0
            and c.head_dim <= 128 and even)


def _splash_fits(c: AttentionCase) -> bool:
    return (not c.cache and c.q_len == c.kv_len and c.q_len % SPLASH_MIN_BLOCK == 0
            and c.mask in ("causal", "padding", "block"))


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, case: AttentionCase) -> jax.Array:
    from latent_pretraining.model.splash import splash_attention  # Pallas imports only when the kernel is used

    return splash_attention(q, k, v, key_valid=mask.key_valid, block_ids=mask.q_block,
                            interpret=case.backend != "tpu")


def _always(c: AttentionCase) -> bool:
    return True


def _blocked_fits(c: AttentionCase) -> bool:
    return c.kv_block > 0 and c.mask != "custom"


def _chunked_fits(c: AttentionCase) -> bool:
    return (not c.cache and c.mask in ("causal", "padding") and 0 < c.q_chunk < c.q_len
            and c.q_len % c.q_chunk == 0 and c.kv_len == c.q_len)


# The one table. Order matters: "auto" takes the first row whose `fits` and `auto` both hold; the last three rows are
# the portable kernels every request falls back to, in this order.
KERNELS: dict[str, Kernel] = {
    "cudnn": Kernel(_cudnn, _always, _cudnn_auto),
    "splash": Kernel(_splash, _splash_fits, lambda c: c.backend == "tpu"),
    "blocked": Kernel(_blocked, _blocked_fits, _always),
    "chunked": Kernel(_chunked, _chunked_fits, _always),
    "xla": Kernel(_xla, _always, _always),
}
PORTABLE = ("blocked", "chunked", "xla")
assert set(ATTENTION_IMPLS) - {"auto"} <= set(KERNELS), "every LlamaConfig.attention_impl value needs a kernel"


def choose_kernel(impl: str, case: AttentionCase) -> str:
    """The ``KERNELS`` row that runs a call: a pure function of the config value and the static facts.

    ``impl`` is a ``LlamaConfig.attention_impl`` value ("auto", "xla", "cudnn", "splash"; validated by the config).
    """
    if impl == "auto":
        return next(name for name, kern in KERNELS.items() if kern.fits(case) and kern.auto(case))
    names = PORTABLE if impl == "xla" else (impl, *PORTABLE)
    return next(name for name in names if KERNELS[name].fits(case))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec, *, impl: str, cache: bool, q_chunk: int = 0,
           kv_block: int = 0) -> jax.Array:
    """Attention through the kernel ``choose_kernel`` picks: ``q [B,T,N,H]``, ``k, v [B,S,K,H]`` -> ``[B,T,N,H]``."""
    case = AttentionCase(backend=jax.default_backend(), dtype=jnp.dtype(q.dtype).name, mask=mask_kind(mask),
                         cache=cache, q_len=q.shape[1], kv_len=k.shape[1], head_dim=q.shape[3], q_chunk=q_chunk,
                         kv_block=kv_block)
    return KERNELS[choose_kernel(impl, case)].run(q, k, v, mask, case)
