"""LLaMA backbone in Flax linen: pre-norm blocks (RMSNorm, RoPE attention, SwiGLU), scanned or looped layers with
remat policies, KV-cache decoding, and a parameter tree laid out like EasyLM/LWM checkpoints::

    transformer/wte/embedding                       [V, D]
    transformer/h/scan_decoder/attention/wq/kernel  [L, D, N*H]   (scan_layers=True; stacked on axis 0)
    transformer/h/0/attention/wq/kernel             [D, N*H]      (scan_layers=False)
        .../attention/{wq,wk,wv,wo}, feed_forward/{w1,w2,w3}, attention_norm, ffn_norm
    transformer/ln_f/kernel                         [D]
    lm_head/kernel                                  [D, V]        (absent when tie_embeddings)

``LlamaModel`` (embedding + blocks + final norm) accepts ``inputs_embeds`` and returns hidden states, so a
multimodal model can mix its own embedding tables and heads around it. ``LlamaForCausalLM`` adds the text head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from latent_pretraining.model import chunked_ce
from latent_pretraining.model.attention import (
    Attention,
    KVCache,
    MaskSpec,
    default_positions,
    key_block_ids,
    make_attention_mask,
)
from latent_pretraining.model.llama_config import LlamaConfig, preset
from latent_pretraining.model.llama_layers import MLP, Embed, Linear, RMSNorm, rope_sin_cos
from latent_pretraining.training.sharding import with_logical_constraint

__all__ = ["Block", "CausalLMOutput", "KVCache", "LlamaConfig", "LlamaForCausalLM", "LlamaModel", "preset"]

ACT_NAMES = ("batch", "length", "act_embed")


class Block(nn.Module):
    """One pre-norm decoder layer. ``(x [B,T,D], sin, cos, mask, kv, cache_index) -> (x, new_kv)``."""

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
    ) -> tuple[jax.Array, Any]:
        cfg = self.config
        h, new_kv = Attention(cfg, name="attention")(
            RMSNorm(cfg, name="attention_norm")(x), sin, cos, mask, kv, cache_index
        )
        x = with_logical_constraint(x + h, ACT_NAMES)
        x = x + MLP(cfg, name="feed_forward")(RMSNorm(cfg, name="ffn_norm")(x))
        return with_logical_constraint(x, ACT_NAMES), new_kv


def _block_class(cfg: LlamaConfig) -> type[nn.Module]:
    if cfg.remat == "none":
        return Block
    policy = getattr(jax.checkpoint_policies, cfg.remat)
    return nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)


class LayerStack(nn.Module):
    """All decoder layers: ``nn.scan`` (params under ``scan_decoder``, layer axis 0) or a loop (``0``, ``1``, ...)."""

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
    ) -> tuple[jax.Array, Any]:
        cfg = self.config
        block_cls = _block_class(cfg)
        if cfg.scan_layers:
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return scanned(cfg, name="scan_decoder")(x, sin, cos, mask, kv, cache_index)
        new_k, new_v = [], []
        for i in range(cfg.num_layers):
            layer_kv = None if kv is None else (kv[0][i], kv[1][i])
            x, out_kv = block_cls(cfg, name=str(i))(x, sin, cos, mask, layer_kv, cache_index)
            if out_kv is not None:
                new_k.append(out_kv[0])
                new_v.append(out_kv[1])
        return x, ((jnp.stack(new_k), jnp.stack(new_v)) if kv is not None else None)


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm. Use as a submodule named ``transformer``.

    ``__call__`` returns ``(hidden [B, T, D] after ln_f, updated cache or None)``.
    """

    config: LlamaConfig

    def setup(self) -> None:
        cfg = self.config
        self.wte = Embed(cfg.vocab_size, cfg)
        self.h = LayerStack(cfg)
        self.ln_f = RMSNorm(cfg)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Text token ids ``[B, T]`` -> embeddings ``[B, T, D]`` (compute dtype)."""
        return self.wte(input_ids)

    def attend(self, hidden: jax.Array) -> jax.Array:
        """Tied-embedding logits ``[B, T, V]`` float32."""
        return self.wte.attend(hidden)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        block_ids: jax.Array | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Runs the body.

        Args:
          input_ids: ``[B, T]`` int token ids, or
          inputs_embeds: ``[B, T, D]`` precomputed embeddings (exactly one of the two).
          attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding (default all real).
          position_ids: ``[B, T]`` int (default: running count of real tokens, continuing after a cache's prefix).
          block_ids: ``[B, T]`` int bidirectional blocks (0 = causal only); see ``make_attention_mask``.
          mask: ``[B, 1|N, T, S]`` bool full attention mask replacing causality (S = T, or the cache capacity).
          cache: a ``KVCache``; the T tokens are written at ``cache.index`` and attend to everything before.
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] and inputs_embeds [B, T, D]")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.compute_dtype)
        if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
            raise ValueError(f"inputs_embeds must be [B, T, {cfg.hidden_size}], got {x.shape}")
        b, t, _ = x.shape
        x = with_logical_constraint(x, ACT_NAMES)
        plain = attention_mask is None and block_ids is None and mask is None and cache is None
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if cache is None:
            if position_ids is None:
                position_ids = default_positions(attention_mask)
            attn_mask = None if plain else make_attention_mask(attention_mask, block_ids=block_ids, mask=mask)
            kv, index = None, None
        else:
            if t > cache.capacity:
                raise ValueError(f"{t} new tokens do not fit a KV cache of capacity {cache.capacity}")
            valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask.astype(bool), (0, cache.index))
            if position_ids is None:
                position_ids = default_positions(attention_mask, cache.next_position)
            attn_mask = make_attention_mask(
                attention_mask, key_valid=valid, offset=cache.index, block_ids=block_ids, mask=mask
            )
            kv, index = (cache.k, cache.v), cache.index
        sin, cos = rope_sin_cos(position_ids, cfg.dim_per_head, cfg.rope_theta)
        causal = block_ids is None and mask is None
        if mask is not None or plain:
            spec = MaskSpec(attn_mask, causal=causal)
        else:  # the mask's parts too, for blocked attention (LlamaConfig.attention_kv_block)
            key_valid = attention_mask.astype(bool) if cache is None else valid
            offset = 0 if cache is None else cache.index
            k_block = None if block_ids is None else key_block_ids(block_ids, key_valid.shape[1], offset)
            spec = MaskSpec(attn_mask, causal=causal, key_valid=key_valid, offset=offset,
                            q_block=None if block_ids is None else block_ids.astype(jnp.int32), k_block=k_block,
                            has_parts=True)
        x, new_kv = self.h(x, sin, cos, spec, kv, index)
        hidden = self.ln_f(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                k=new_kv[0],
                v=new_kv[1],
                valid=valid,
                index=cache.index + t,
                next_position=cache.next_position + attention_mask.astype(jnp.int32).sum(axis=1),
            )
        return hidden, new_cache


@struct.dataclass
class CausalLMOutput:
    """``logits [B, T, V]`` float32 (None if not computed), ``hidden [B, T, D]`` (after ln_f), ``cache``."""

    logits: jax.Array | None
    hidden: jax.Array
    cache: KVCache | None = None


class LlamaForCausalLM(nn.Module):
    """The backbone with its text head; ``__call__`` takes ``LlamaModel`` arguments and returns ``CausalLMOutput``."""

    config: LlamaConfig

    def setup(self) -> None:
        cfg = self.config
        self.transformer = LlamaModel(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.vocab_size, ("embed", "vocab"), cfg, out_dtype=jnp.float32)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Hidden ``[B, T, D]`` -> text logits ``[B, T, V]`` float32."""
        out = self.transformer.attend(hidden) if self.config.tie_embeddings else self.lm_head(hidden)
        return with_logical_constraint(out, ("batch", "length", "act_vocab"))

    def __call__(self, input_ids: jax.Array | None = None, *, compute_logits: bool = True, **kwargs: Any) -> Any:
        hidden, cache = self.transformer(input_ids, **kwargs)
        return CausalLMOutput(logits=self.logits(hidden) if compute_logits else None, hidden=hidden, cache=cache)


def lm_head_kernel(config: LlamaConfig, params: Any) -> jax.Array:
    """The text head's ``[D, V]`` weights from ``{"params": ...}`` of ``LlamaForCausalLM`` (tied: ``wte`` transposed),
    for ``chunked_ce.token_nll`` / ``lm_loss``."""
    p = params["params"]
    return p["transformer"]["wte"]["embedding"].T if config.tie_embeddings else p["lm_head"]["kernel"]


def lm_loss(model: LlamaForCausalLM, params: Any, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of ``tokens [B, T+1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``).

    With ``config.loss_chunk > 0`` the head + CE run chunked and rematerialized (``chunked_ce``), else on full
    ``[B, T, V]`` f32 logits; the value is the same."""
    cfg = model.config
    targets = tokens[:, 1:]
    if cfg.loss_chunk > 0:
        hidden = model.apply(params, tokens[:, :-1], compute_logits=False).hidden
        return chunked_ce.lm_loss(hidden, lm_head_kernel(cfg, params), targets, chunk=cfg.loss_chunk,
                                  compute_dtype=cfg.compute_dtype)
    logits = model.apply(params, tokens[:, :-1]).logits
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0])


def init_params(config: LlamaConfig, rng: jax.Array, batch: int = 1, length: int = 8, boxed: bool = False) -> Any:
    """Random parameters ``{"params": ...}`` (plain arrays unless ``boxed``: then with logical-axis metadata)."""
    model = LlamaForCausalLM(config)
    variables = model.init(rng, jnp.zeros((batch, length), jnp.int32))
    return variables if boxed else nn.meta.unbox(variables)


def abstract_params(config: LlamaConfig, batch: int = 1, length: int = 8) -> Any:
    """``jax.eval_shape`` of the boxed variables: shapes, dtypes and logical names without allocating."""
    return jax.eval_shape(lambda r: init_params(config, r, batch, length, boxed=True), jax.random.key(0))


def random_params(config: LlamaConfig, seed: int = 0) -> Any:
    """Random ``{"params": ...}`` drawn with numpy (no XLA compile; handy for tests and benchmarks):
    normal(0, initializer_range) matrices and embeddings, ones for norm scales."""
    shapes = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path: tuple[Any, ...], s: jax.ShapeDtypeStruct) -> jax.Array:
        keys = [getattr(k, "key", "") for k in path]
        if any(k.endswith("norm") or k == "ln_f" for k in keys):
            return jnp.ones(s.shape, s.dtype)
        return jnp.asarray(rng.normal(0.0, config.initializer_range, s.shape).astype(np.float32), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def stack_layers(layers: list[Any]) -> Any:
    """Per-layer param trees (``h/0``, ``h/1``, ...) -> one tree stacked on axis 0 (``h/scan_decoder``)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


def unstack_layers(stacked: Any, num_layers: int) -> list[Any]:
    """Inverse of ``stack_layers``."""
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)]


def set_scan_layout(params: Any, scan_layers: bool) -> Any:
    """Converts ``{"transformer": {"h": ...}}`` (or that tree under "params") between scanned and looped layouts."""
    root = params.get("params", params)
    h = root["transformer"]["h"]
    is_scanned = "scan_decoder" in h
    if is_scanned == scan_layers:
        return params
    if scan_layers:
        new_h = {"scan_decoder": stack_layers([h[str(i)] for i in range(len(h))])}
    else:
        n = jax.tree.leaves(h["scan_decoder"])[0].shape[0]
        new_h = {str(i): layer for i, layer in enumerate(unstack_layers(h["scan_decoder"], n))}
    new_root = {**root, "transformer": {**root["transformer"], "h": new_h}}
    return {**params, "params": new_root} if "params" in params else new_root
