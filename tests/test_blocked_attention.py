"""Blocked (online-softmax) attention equals ``jax.nn.dot_product_attention`` with the dense mask, for every mask kind
(causal, padding, bidirectional blocks, KV cache), outputs and gradients; and the model with it switched on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_pretraining.model.attention import KVCache, key_block_ids, make_attention_mask
from latent_pretraining.model.blocked_attention import blocked_attention
from latent_pretraining.model.llama import LlamaForCausalLM, random_params
from latent_pretraining.model.llama_config import LlamaConfig

B, N, K, H = 2, 4, 2, 8  # grouped-query: 2 query heads per kv head


def _qkv(t: int, s: int, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, t, N, H))
    k = jax.random.normal(ks[1], (B, s, K, H))
    v = jax.random.normal(ks[2], (B, s, K, H))
    w = jax.random.normal(ks[3], (B, t, N, H))  # cotangent weights for the gradient check
    return q, k, v, w


def _case(kind: str):
    """(t, s, kwargs for blocked_attention, dense mask [B,1,T,S])."""
    t = 7
    am = jnp.ones((B, t), jnp.int32)
    if kind == "causal":
        return t, t, {"causal_self": True}, make_attention_mask(am)
    if kind == "padding":  # left padding in row 0, right padding in row 1
        am = jnp.asarray([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
        return t, t, {"key_valid": am.astype(bool), "causal_self": True}, make_attention_mask(am)
    if kind == "blocks":  # a bidirectional block in the middle / at the end, with padding
        am = jnp.asarray([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
        ids = jnp.asarray([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 2, 2, 2, 2]])
        kw = {"key_valid": am.astype(bool), "q_block": ids, "k_block": ids}
        return t, t, kw, make_attention_mask(am, block_ids=ids)
    if kind == "cache":  # 3 new tokens written at slot 5 of a 10-slot cache; slot 1 of row 0 was padding
        t, s, offset = 3, 10, 5
        am = jnp.ones((B, t), jnp.int32)
        valid = jnp.zeros((B, s), bool).at[:, : offset + t].set(True).at[0, 1].set(False)
        ids = jnp.asarray([[1, 1, 0], [0, 3, 3]])
        kw = {"key_valid": valid, "offset": jnp.asarray(offset), "q_block": ids,
              "k_block": key_block_ids(ids, s, offset)}
        return t, s, kw, make_attention_mask(am, key_valid=valid, offset=offset, block_ids=ids)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["causal", "padding", "blocks", "cache"])
@pytest.mark.parametrize("block", [3, 16])  # 3 divides neither T = 7 nor S = 10; 16 > S: one block
def test_blocked_matches_dense_outputs_and_grads(kind: str, block: int) -> None:
    t, s, kw, mask = _case(kind)
    q, k, v, w = _qkv(t, s)
    rows = mask.any(-1)[:, 0][:, :, None, None]  # [B, T, 1, 1]: queries that see any key

    def dense(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")

    def blocked(q, k, v):
        return blocked_attention(q, k, v, block=block, **kw)

    o0, o1 = dense(q, k, v), jax.jit(blocked)(q, k, v)
    np.testing.assert_allclose(jnp.where(rows, o1, 0), jnp.where(rows, o0, 0), atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(jnp.where(rows, 0, o1)).max()) == 0.0  # queries that see nothing: 0

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.where(rows, f(q, k, v), 0) * w)

    g0 = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    g1 = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(q, k, v)
    for a, b_, name in zip(g1, g0, "qkv", strict=True):
        np.testing.assert_allclose(a, b_, atol=1e-5, rtol=1e-4, err_msg=f"d{name}")


def test_blocked_rejects_bad_arguments() -> None:
    q, k, v, _ = _qkv(4, 4)
    with pytest.raises(ValueError, match="> 0"):
        blocked_attention(q, k, v, block=0)
    with pytest.raises(ValueError, match="both q_block"):
        blocked_attention(q, k, v, block=2, q_block=jnp.zeros((B, 4), jnp.int32))
    with pytest.raises(ValueError, match="N % K"):
        k3 = jnp.concatenate([k, k[:, :, :1]], axis=2)  # 3 kv heads for 4 query heads
        blocked_attention(q, k3, k3, block=2)
    with pytest.raises(ValueError, match="attention_kv_block"):
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    attention_kv_block=-1)


def _cfg(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                       max_seq_len=64, **kw)


def test_model_with_blocked_attention_matches_dense() -> None:
    """Padding + bidirectional blocks through the whole model, then a cached prefix + decode step."""
    base, blocked = _cfg(), _cfg(attention_kv_block=3)
    params = random_params(base, seed=4)
    ids = jax.random.randint(jax.random.key(5), (B, 9), 0, base.vocab_size)
    am = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    blocks = jnp.asarray([[0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 2, 2, 2]])

    def run(cfg, **kw):
        return jax.jit(lambda p: LlamaForCausalLM(cfg).apply(p, ids, attention_mask=am, **kw).logits)(params)

    valid = am.astype(bool)[:, :, None]
    for kw in ({}, {"block_ids": blocks}):
        np.testing.assert_allclose(jnp.where(valid, run(blocked, **kw), 0), jnp.where(valid, run(base, **kw), 0),
                                   atol=1e-4, rtol=1e-4)
    # plain causal (no mask arguments) takes the blocked path too
    plain = [jax.jit(lambda p, c=c: LlamaForCausalLM(c).apply(p, ids).logits)(params) for c in (base, blocked)]
    np.testing.assert_allclose(plain[1], plain[0], atol=1e-4, rtol=1e-4)

    def decode(cfg):
        model = LlamaForCausalLM(cfg)
        cache = KVCache.init(cfg, B, 12)
        out = model.apply(params, ids[:, :6], attention_mask=am[:, :6], cache=cache)
        return model.apply(params, ids[:, 6:], attention_mask=am[:, 6:], block_ids=blocks[:, 6:],
                           cache=out.cache).logits

    np.testing.assert_allclose(decode(blocked), decode(base), atol=1e-4, rtol=1e-4)


def test_blocked_attention_shrinks_the_compiled_temporaries() -> None:
    """Scores stay in key blocks: the backward pass of a block-masked layer needs far fewer temporary bytes."""
    t = 256
    q, k, v, _ = _qkv(t, t)
    ids = jnp.zeros((B, t), jnp.int32).at[:, 100:120].set(1)
    mask = make_attention_mask(jnp.ones((B, t), jnp.int32), block_ids=ids)

    def temp(f) -> int:
        g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v)), argnums=(0, 1, 2)))
        return g.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    dense = temp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla"))
    blocked = temp(lambda q, k, v: blocked_attention(q, k, v, block=32, q_block=ids, k_block=ids))
    assert blocked < dense / 2, (blocked, dense)


