"""LLaMA backbone configuration: a frozen (hashable) dataclass with named size presets and a dict round-trip.

Presets (``preset(name, **overrides)``):

| name  | hidden | ffn   | layers | heads | kv heads | vocab  | rope theta | note                                  |
|-------|--------|-------|--------|-------|----------|--------|------------|---------------------------------------|
| debug | 256    | 256   | 2      | 2     | 2        | 32000  | 1e4        | LWM's debug size                      |
| 200m  | 1024   | 2048  | 14     | 8     | 8        | 32000  | 1e4        |                                       |
| 1b    | 2048   | 5504  | 22     | 16    | 16       | 32000  | 1e4        |                                       |
| 7b    | 4096   | 11008 | 32     | 32    | 32       | 32000  | 1e4        | LLaMA-2-7B = LWM backbone (LWM: 5e7)  |
| 8b    | 4096   | 14336 | 32     | 32    | 8        | 128256 | 5e5        | LLaMA-3 style GQA                     |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from core.lookup import check_names, lookup

REMAT_POLICIES = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable")
_DTYPES = ("float32", "bfloat16", "float16")
# "auto" picks by backend at trace time (GPU: cuDNN flash, TPU: Pallas splash, else the portable kernels); the
# others force one kernel where it fits the call. The kernel table is ``model/attention_kernels.py``.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of the LLaMA backbone (usable as a Flax module attribute: frozen and hashable).

    Attributes:
      num_kv_heads: key/value heads (GQA); 0 means ``num_heads`` (MHA).
      head_dim: per-head width; 0 means ``hidden_size // num_heads``.
      scan_layers: ``nn.scan`` over layers (params stacked on axis 0 under ``h/scan_decoder``) or a Python loop
        (``h/0``, ``h/1``, ...).
      remat: one of ``REMAT_POLICIES`` (gradient checkpointing of each block).
      dtype / param_dtype: compute and storage dtypes by name; logits are always float32.
      attention_impl: one of ``ATTENTION_IMPLS``: "auto" = cuDNN flash attention on GPU (bf16/fp16), Pallas splash
        attention on TPU, else the portable kernels below; "xla", "cudnn", "splash" force one kernel where it fits
        the call (``model/attention_kernels.py``: table, fallbacks).
      attention_q_chunk: > 0 splits causal self-attention (no cache) into query chunks of this size that skip the
        masked key blocks: about 2x faster attention on CPU at length 512 (chunk 128); leave 0 on GPU/TPU.
      attention_kv_block: > 0 runs attention as an online softmax over key blocks of this size
        (``model/blocked_attention.py``) for causal, padding, bidirectional-block and cache masks alike: no
        [B, N, T, S] scores or mask. Overrides ``attention_q_chunk``; 0 = off (``jax.nn.dot_product_attention``).
      loss_chunk: > 0 computes every discrete head + cross-entropy in chunks of this many positions, rematerialized
        (``model/chunked_ce.py``): the [B, T, V] f32 logits never exist at once. 0 = plain (all logits at once).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 0
    head_dim: int = 0
    max_seq_len: int = 4096
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    scan_layers: bool = True
    remat: str = "none"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    attention_q_chunk: int = 0
    attention_kv_block: int = 0
    loss_chunk: int = 0

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                raise ValueError(f"LlamaConfig.{field}={getattr(self, field)!r}; expected one of {_DTYPES}")
        lookup(ATTENTION_IMPLS, self.attention_impl, "LlamaConfig.attention_impl")
        if self.attention_kv_block < 0:
            raise ValueError(f"LlamaConfig.attention_kv_block={self.attention_kv_block}; expected >= 0 (0 = off)")
        if self.loss_chunk < 0:
            raise ValueError(f"LlamaConfig.loss_chunk={self.loss_chunk}; expected >= 0 (0 = off)")
        if self.head_dim == 0 and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; set head_dim"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.kv_heads}")
        if self.dim_per_head % 2:
            raise ValueError(f"head_dim {self.dim_per_head} must be even for rotary embeddings")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **overrides: Any) -> LlamaConfig:
        """A copy with some fields changed (unknown names raise with a suggestion)."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LlamaConfig:
        """Builds a config from a dict (e.g. ``config.to_dict()`` or an ``ml_collections.ConfigDict``)."""
        d = dict(d)
        _check_fields(d)
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count (embeddings and head included)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.dim_per_head
        attn = d * hd * (2 * self.num_heads + 2 * self.kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    def flops_per_token(self, seq_len: int, backward: bool = True) -> float:
        """Model FLOPs per token (PaLM convention): 2 x matmul params + 4 x layers x heads x head_dim x seq (full
        attention), times 3 with the backward pass. Embedding lookups and norms are not counted."""
        d, hd = self.hidden_size, self.dim_per_head
        per_layer = d * hd * (2 * self.num_heads + 2 * self.kv_heads) + 3 * d * self.intermediate_size
        matmul_params = self.num_layers * per_layer + d * self.vocab_size
        fwd = 2 * matmul_params + 4 * self.num_layers * self.num_heads * hd * seq_len
        return float(fwd * (3 if backward else 1))


def _check_fields(d: Mapping[str, Any]) -> None:
    check_names(d, [f.name for f in dataclasses.fields(LlamaConfig)], "LlamaConfig field", list_known=False)


PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(hidden_size=256, intermediate_size=256, num_layers=2, num_heads=2, max_seq_len=2048),
    "200m": dict(hidden_size=1024, intermediate_size=2048, num_layers=14, num_heads=8, max_seq_len=2048),
    "1b": dict(hidden_size=2048, intermediate_size=5504, num_layers=22, num_heads=16, max_seq_len=2048),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, max_seq_len=4096),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        rms_eps=1e-5,
        max_seq_len=8192,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
}


def preset(name: str, **overrides: Any) -> LlamaConfig:
    """A named size preset with field overrides, e.g. ``preset("7b", rope_theta=5e7, dtype="bfloat16")``."""
    size = lookup(PRESETS, name, "LLaMA preset")
    _check_fields(overrides)
    return LlamaConfig(**{**size, **overrides})
