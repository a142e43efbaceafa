"""LLaMA backbone: KV cache vs full forward, scan/remat variants, masks, gradients, config presets.

Every forward is jitted with the same shapes where possible (XLA compiles dominate the runtime on a 2-core machine).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_pretraining.model.attention import KVCache, make_attention_mask
from latent_pretraining.model.llama import LlamaForCausalLM, random_params, set_scan_layout
from latent_pretraining.model.llama_config import LlamaConfig, preset

VOCAB, B, T = 97, 2, 8
CFG = preset(
    "debug", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
    initializer_range=0.1,
)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run(params, tokens, cfg, **kw):
    return LlamaForCausalLM(cfg).apply(params, tokens, **kw)


def run(params, tokens=None, cfg=CFG, **kw):
    """Jitted ``LlamaForCausalLM(cfg).apply`` (cfg always passed explicitly so the jit cache is shared)."""
    return _run(params, tokens, cfg=cfg, **kw)


def loss_and_grad(params, tokens, mask, cfg=CFG):
    return _loss_and_grad(params, tokens, mask, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _loss_and_grad(params, tokens, mask, cfg):
    def loss(p):
        logits = LlamaForCausalLM(cfg).apply(p, tokens, attention_mask=mask).logits
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
        return jnp.sum(nll * mask) / jnp.sum(mask)

    return jax.value_and_grad(loss)(params)


def ids(b: int = B, t: int = T, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB)


PADDED = jnp.ones((B, T), jnp.int32).at[1, :2].set(0)  # row 1 left-padded by two tokens


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, seed=0)


def test_forward_shapes_dtypes_and_embeds(params):
    x = ids()
    out = run(params, x)
    assert out.logits.shape == (B, T, VOCAB) and out.logits.dtype == jnp.float32
    assert out.hidden.shape == (B, T, 32) and out.cache is None
    emb = params["params"]["transformer"]["wte"]["embedding"][x]
    np.testing.assert_allclose(run(params, inputs_embeds=emb).logits, out.logits, atol=1e-6)
    out_bf = run(params, x, cfg=CFG.replace(dtype="bfloat16"))
    assert out_bf.logits.dtype == jnp.float32 and out_bf.hidden.dtype == jnp.bfloat16
    np.testing.assert_allclose(out_bf.logits, out.logits, atol=0.1)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        run(params)


@pytest.mark.parametrize("scan", [True, False])
def test_kv_cache_decode_equals_full_forward(params, scan):
    cfg = CFG.replace(scan_layers=scan)
    params = set_scan_layout(params, scan)
    prompt = 4
    tokens = ids()
    full = run(params, tokens, cfg=cfg, attention_mask=PADDED).logits
    out = run(params, tokens[:, :prompt], cfg=cfg, attention_mask=PADDED[:, :prompt], cache=KVCache.init(cfg, B, 12))
    got, cache = [out.logits], out.cache
    for i in range(prompt, T):  # decode one token at a time
        out = run(params, tokens[:, i : i + 1], cfg=cfg, attention_mask=PADDED[:, i : i + 1], cache=cache)
        got.append(out.logits)
        cache = out.cache
    valid = np.asarray(PADDED, bool)
    np.testing.assert_allclose(np.concatenate(got, axis=1)[valid], np.asarray(full)[valid], atol=1e-5)
    assert int(cache.index) == T
    np.testing.assert_array_equal(cache.next_position, [T, T - 2])


def test_explicit_positions_continue_after_prefix(params):
    tokens = ids()
    full = run(params, tokens).logits
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    first = run(params, tokens[:, :4], position_ids=pos[:, :4], cache=KVCache.init(CFG, B, 12))
    second = run(params, tokens[:, 4:], position_ids=pos[:, 4:], cache=first.cache)
    np.testing.assert_allclose(second.logits, full[:, 4:], atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [
        dict(scan_layers=False),
        dict(remat="dots_saveable", attention_q_chunk=4),
        dict(remat="nothing_saveable", scan_layers=False),
    ],
    ids=["loop", "scan-dots-chunked", "loop-nothing"],
)
def test_scan_and_remat_variants_equal_plain(params, variant):
    other = CFG.replace(**variant)
    x = ids()
    l1, g1 = loss_and_grad(params, x, PADDED)
    l2, g2 = loss_and_grad(set_scan_layout(params, other.scan_layers), x, PADDED, cfg=other)
    np.testing.assert_allclose(l1, l2, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, set_scan_layout(g2, True))


@pytest.mark.parametrize("tie", [False, True])
def test_gradients_finite_and_nonzero_for_every_param(params, tie):
    cfg = CFG.replace(tie_embeddings=tie)
    if tie:
        params = {"params": {"transformer": params["params"]["transformer"]}}
    _, grads = loss_and_grad(params, ids(), PADDED, cfg=cfg)
    assert ("lm_head" in grads["params"]) == (not tie)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.any(g != 0), f"zero gradient for {jax.tree_util.keystr(path)}"


def test_block_mask_is_bidirectional_inside_block_only(params):
    x = ids()
    blocks = jnp.array([[0, 0, 0, 0, 1, 1, 1, 0]] * B)
    base = run(params, x, block_ids=blocks).logits
    changed = run(params, x.at[:, 6].set((x[:, 6] + 1) % VOCAB), block_ids=blocks).logits
    diff = np.abs(np.asarray(changed - base)).max(-1)[0]
    assert np.all(diff[:4] == 0) and np.all(diff[4:] > 0)  # block members see token 6, the prefix does not
    # the same block decoded against a cached prefix gives the same logits
    first = run(params, x[:, :4], cache=KVCache.init(CFG, B, 12))
    tail = run(params, x[:, 4:], block_ids=blocks[:, 4:], cache=first.cache)
    np.testing.assert_allclose(tail.logits, base[:, 4:], atol=1e-5)


def test_full_mask_override_and_validation(params):
    x = ids()
    causal = make_attention_mask(jnp.ones((B, T), jnp.int32))
    np.testing.assert_allclose(run(params, x, mask=causal).logits, run(params, x).logits, atol=1e-6)
    with pytest.raises(ValueError, match="attention mask must be"):
        run(params, x, mask=jnp.ones((B, 1, T, T - 1), bool))


def test_config_presets_and_round_trip():
    for name, n in [("7b", 6.74e9), ("8b", 8.03e9), ("1b", 1.24e9)]:
        assert abs(preset(name).num_params() - n) / n < 0.02, name
    cfg = preset("8b", scan_layers=False)
    assert cfg.kv_heads == 8 and cfg.dim_per_head == 128 and cfg.rope_theta == 5e5
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg and hash(cfg) == hash(LlamaConfig.from_dict(cfg.to_dict()))
    with pytest.raises(ValueError, match="did you mean 'debug'"):
        preset("debgu")
    with pytest.raises(ValueError, match="did you mean 'rope_theta'"):
        preset("debug", rope_thetta=1.0)
    with pytest.raises(ValueError, match="remat"):
        preset("debug", remat="dots")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_layers = 3  # type: ignore[misc]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_swiglu_custom_vjp_equals_autodiff(dtype):
    """swiglu's forward is silu(gate) * up exactly; its two-residual backward matches autodiff (bf16: within an ulp)."""
    import flax.linen as nn

    from latent_pretraining.model.llama_layers import swiglu

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    gate = (3 * jax.random.normal(k1, (2, 8, 32))).astype(dtype)
    up, w = (jax.random.normal(k, (2, 8, 32)).astype(dtype) for k in (k2, k3))
    assert bool(jnp.all(swiglu(gate, up) == nn.silu(gate) * up))
    ref = jax.grad(lambda a, b: jnp.sum((nn.silu(a) * b).astype(jnp.float32) * w), (0, 1))(gate, up)
    new = jax.grad(lambda a, b: jnp.sum(swiglu(a, b).astype(jnp.float32) * w), (0, 1))(gate, up)
    for r, n in zip(ref, new, strict=True):
        assert n.dtype == dtype
        tol = 1e-5 if dtype == jnp.float32 else 2 ** -7 * float(jnp.max(jnp.abs(r.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(n, np.float32), np.asarray(r, np.float32), atol=tol)
