"""policy.sampler: the prefix-KV-cached flow sampler and cached greedy decoding equal their naive counterparts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_pretraining import flow
from latent_pretraining.model.llama_config import LlamaConfig
from latent_pretraining.model.video_llama import ACTION_BIN, LATENT, VideoLlama, VideoLlamaConfig, init_params
from latent_pretraining.sequence import LayoutSpec, assemble
from policy import sampler

B, A = 2, 3


def _model() -> tuple[VideoLlama, dict]:
    llama = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                        max_seq_len=256)
    cfg = VideoLlamaConfig(llama=llama, vision_vocab_size=18, latent_vocab_size=9, action_vocab_size=12,
                           action_dim=A)
    params = init_params(cfg, jax.random.PRNGKey(0))["params"]
    # bigger than normal(0.02) so that attention patterns (and any mask / position mistake) matter
    params = jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 else x, params)
    return VideoLlama(cfg), params


def _spec(**kw) -> LayoutSpec:
    base = dict(prompt_len=7, num_frames=2, tokens_per_frame=4, vision_codebook=16, future_frame=False,
                latent_steps=2, codes_per_step=2, latent_codebook=8, latent_separator=True, action_slots=4,
                bos_id=1, eos_id=2, pad_id=0, video_open=(5, 6), video_close=(7,), action_open=(8, 9),
                action_close=(10,))
    return LayoutSpec(**{**base, **kw})


def _seq(spec: LayoutSpec, action_row: bool = True):
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 40, (B, spec.prompt_len)).astype(np.int32)
    mask = np.ones((B, spec.prompt_len), bool)
    mask[0, :3] = False  # left padding in row 0: positions must still agree
    prompt[0, :3] = spec.pad_id
    frames = rng.integers(0, 16, (B, spec.num_frames, spec.tokens_per_frame)).astype(np.int32)
    kw = {}
    if spec.latent_steps:
        kw["latent_ids"] = rng.integers(0, 8, (B, spec.latent_steps, spec.codes_per_step)).astype(np.int32)
    if getattr(spec, "action_tokens", 0):
        kw["action_token_ids"] = np.zeros((B, spec.action_tokens), np.int32)
    return assemble(spec, jnp.asarray(prompt), jnp.asarray(mask), jnp.asarray(frames),
                    action_row=jnp.full((B,), action_row), **kw)


@pytest.mark.parametrize("bidirectional,integrator", [(False, "euler"), (True, "euler"), (True, "heun")])
def test_cached_flow_sampler_equals_naive(bidirectional: bool, integrator: str) -> None:
    model, params = _model()
    spec = _spec(bidirectional_actions=bidirectional)
    seq = _seq(spec)
    assert bool(jnp.any(seq.block_ids > 0)) == bidirectional
    noise = jax.random.normal(jax.random.PRNGKey(3), (B, spec.action_slots, A))
    cfg = flow.FlowConfig(steps=10)
    naive = jax.jit(lambda p, s, x: sampler.flow_sample_naive(model, p, s, spec, x, cfg, integrator=integrator))
    cached = sampler.jit_flow_sample(model, spec, cfg, None, integrator, True)
    a, b = np.asarray(naive(params, seq, noise)), np.asarray(cached(params, seq, noise))
    assert a.shape == (B, spec.action_slots, A) and np.all(np.isfinite(a))
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    assert np.abs(a - np.asarray(noise)).max() > 1e-2  # the integration did something


def test_bidirectional_chunk_differs_from_causal() -> None:
    """Guards the bidirectional test above against a block mask that silently does nothing."""
    model, params = _model()
    noise = jax.random.normal(jax.random.PRNGKey(3), (B, 4, A))
    cfg = flow.FlowConfig(steps=3)
    outs = []
    for bi in (False, True):
        spec = _spec(bidirectional_actions=bi)
        outs.append(np.asarray(sampler.jit_flow_sample(model, spec, cfg)(params, _seq(spec), noise)))
    assert np.abs(outs[0] - outs[1]).max() > 1e-4


def test_flow_sampler_is_deterministic_per_noise_seed() -> None:
    model, params = _model()
    spec = _spec()
    seq = _seq(spec)
    fn = sampler.jit_flow_sample(model, spec, flow.FlowConfig(steps=4))
    draw = lambda s: np.asarray(fn(params, seq, jax.random.normal(jax.random.PRNGKey(s), (B, 4, A))))
    np.testing.assert_array_equal(draw(5), draw(5))
    assert np.abs(draw(5) - draw(6)).max() > 1e-3


def test_greedy_latent_decode_cached_equals_naive() -> None:
    model, params = _model()
    spec = _spec(action_slots=0)
    seq = _seq(spec, action_row=False)
    start, n = spec.latent_start, spec.latent_steps * spec.step_len
    cached = sampler.jit_greedy_decode(model, start, n, LATENT, "latent")(params, seq, jax.random.PRNGKey(0))
    naive = sampler.jit_greedy_decode(model, start, n, LATENT, "latent", cached=False)(params, seq, None)
    assert cached.shape == (B, n) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))
    assert len(np.unique(np.asarray(cached))) > 1  # not a degenerate constant
    force = tuple(([-1] * spec.codes_per_step + [spec.separator]) * spec.latent_steps)
    forced = sampler.jit_greedy_decode(model, start, n, LATENT, "latent", vocab=spec.latent_codebook, force=force)
    forced_naive = sampler.jit_greedy_decode(model, start, n, LATENT, "latent", vocab=spec.latent_codebook,
                                             force=force, cached=False)
    f1 = np.asarray(forced(params, seq, None))
    np.testing.assert_array_equal(f1, np.asarray(forced_naive(params, seq, None)))
    np.testing.assert_array_equal(f1[:, spec.codes_per_step::spec.step_len], spec.separator)
    assert f1.reshape(B, spec.latent_steps, spec.step_len)[..., :-1].max() < spec.latent_codebook


def test_action_bin_decode_cached_equals_naive_greedy_and_sampled() -> None:
    model, params = _model()
    if "action_tokens" in {f.name for f in dataclasses.fields(LayoutSpec)}:
        spec = _spec(action_slots=0, action_tokens=6)
        start = spec.prefix_len + len(spec.action_open)
    else:  # older sequence.py: decode at the action slots' positions (families are overwritten while decoding)
        spec = _spec(action_slots=6)
        start = int(spec.action_positions[0])
    seq = _seq(spec, action_row=True)
    greedy = sampler.jit_greedy_decode(model, start, 6, ACTION_BIN, "action_bins")(params, seq, None)
    naive = sampler.jit_greedy_decode(model, start, 6, ACTION_BIN, "action_bins", cached=False)(params, seq, None)
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(naive))
    key = jax.random.PRNGKey(11)
    run = sampler.jit_greedy_decode(model, start, 6, ACTION_BIN, "action_bins", sample=True, temperature=1.5)
    s1, s2 = np.asarray(run(params, seq, key)), np.asarray(run(params, seq, key))
    np.testing.assert_array_equal(s1, s2)  # same seed, same tokens
    naive = sampler.jit_greedy_decode(model, start, 6, ACTION_BIN, "action_bins", sample=True, temperature=1.5,
                                      cached=False)(params, seq, key)
    np.testing.assert_array_equal(s1, np.asarray(naive))
    others = [np.asarray(run(params, seq, jax.random.PRNGKey(k))) for k in range(4)]
    assert any(not np.array_equal(o, s1) for o in others)
