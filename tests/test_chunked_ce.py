"""Chunked, rematerialized head + cross-entropy equals the plain (full-logits) one: loss, accuracy and gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.errors import UserError
from latent_pretraining import objective
from latent_pretraining.model import chunked_ce
from latent_pretraining.model.llama import LlamaForCausalLM, lm_loss, random_params
from latent_pretraining.model.llama_config import LlamaConfig

B, T, D, V = 2, 11, 16, 37


def _data(seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(ks[0], (B, T, D), jnp.float32)
    kernel = 0.3 * jax.random.normal(ks[1], (D, V), jnp.float32)
    targets = jax.random.randint(ks[2], (B, T), 0, V)
    weights = jax.random.uniform(ks[3], (B, T)) < 0.6
    weights = weights.at[1].set(False)  # a row without targets: excluded from the row mean
    weights = weights.at[1, 3].set(True).at[0, 0].set(True)
    return hidden, kernel, targets, weights


def _plain_loss(hidden, kernel, targets, weights):
    logits = hidden @ kernel
    loss, acc, n = objective.cross_entropy(logits, targets, weights)
    return loss, (acc, n)


def _chunked_loss(hidden, kernel, targets, weights, chunk):
    nll, hit = chunked_ce.token_nll(hidden, kernel, targets, chunk=chunk)
    loss, acc, n = objective.cross_entropy_from_nll(nll, hit, weights)
    return loss, (acc, n)


@pytest.mark.parametrize("chunk", [1, 3, 4, 11, 64])  # 3 and 4 do not divide T = 11
def test_chunked_matches_plain_loss_and_grads(chunk: int) -> None:
    hidden, kernel, targets, weights = _data()
    (l0, (a0, n0)), (gh0, gk0) = jax.value_and_grad(_plain_loss, argnums=(0, 1), has_aux=True)(
        hidden, kernel, targets, weights)
    fn = jax.jit(jax.value_and_grad(_chunked_loss, argnums=(0, 1), has_aux=True), static_argnums=4)
    (l1, (a1, n1)), (gh1, gk1) = fn(hidden, kernel, targets, weights, chunk)
    np.testing.assert_allclose(l1, l0, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(a1, a0, atol=1e-6)
    assert float(n1) == float(n0)
    np.testing.assert_allclose(gh1, gh0, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gk1, gk0, atol=1e-5, rtol=1e-5)
    # the padding row of the last chunk and the unweighted row must get no gradient
    assert float(jnp.abs(gh1[1, :3]).max()) == 0.0
    assert float(jnp.abs(gh1[1, 3]).max()) > 0.0


def test_chunked_never_materializes_full_logits() -> None:
    """The chunked backward keeps [B, chunk, V] logits, not [B, T, V]: the compiled temporaries shrink."""
    b, t, d, v = 2, 256, 32, 4096
    hidden = jnp.ones((b, t, d), jnp.float32)
    kernel = jnp.ones((d, v), jnp.float32) * 0.01
    targets = jnp.zeros((b, t), jnp.int32)

    def temp_bytes(chunk: int) -> int:
        f = jax.jit(jax.grad(lambda h, k: jnp.mean(chunked_ce.token_nll(h, k, targets, chunk=chunk)[0]),
                             argnums=(0, 1)))
        return f.lower(hidden, kernel).compile().memory_analysis().temp_size_in_bytes

    full = b * t * v * 4
    assert temp_bytes(0) >= full
    assert temp_bytes(32) < full // 2


def test_bad_arguments_are_one_line_errors() -> None:
    hidden, kernel, targets, _ = _data()
    with pytest.raises(ValueError, match="kernel \\[D, V\\]"):
        chunked_ce.token_nll(hidden, kernel.T, targets)
    with pytest.raises(ValueError, match="targets must be"):
        chunked_ce.token_nll(hidden, kernel, targets[:, :3])
    with pytest.raises(ValueError, match=">= 0"):
        chunked_ce.token_nll(hidden, kernel, targets, chunk=-1)
    with pytest.raises(ValueError, match="loss_chunk"):
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, loss_chunk=-2)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_lm_loss_chunked_matches_plain(tie: bool) -> None:
    cfg = LlamaConfig(vocab_size=53, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                      max_seq_len=32, tie_embeddings=tie)
    params = random_params(cfg, seed=1)
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, cfg.vocab_size)
    l0, g0 = jax.jit(jax.value_and_grad(lambda p: lm_loss(LlamaForCausalLM(cfg), p, tokens)))(params)
    cfg_c = dataclasses.replace(cfg, loss_chunk=4)  # 9 positions: chunks of 4, 4, 1 (padded)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: lm_loss(LlamaForCausalLM(cfg_c), p, tokens)))(params)
    np.testing.assert_allclose(l1, l0, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_video_llama_objective_chunked_matches_plain() -> None:
    """Every discrete head of the VideoLLaMA objective (text tied to the table, vision, latent): same losses,
    accuracies and grads."""
    tie = True
    from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig, init_params
    from latent_pretraining.sequence import LayoutSpec, assemble

    spec = LayoutSpec(prompt_len=5, num_frames=2, tokens_per_frame=4, vision_codebook=100, future_frame=True,
                      latent_steps=2, codes_per_step=3, latent_codebook=8, latent_separator=True, action_slots=0,
                      bos_id=1, eos_id=2, pad_id=0, video_open=(30, 31), video_close=(32,))
    prompt = jnp.asarray([[0, 0, 1, 7, 9], [1, 5, 6, 7, 9]])
    frames = jnp.arange(2 * 2 * 4).reshape(2, 2, 4) + 10
    future = jnp.arange(2 * 4).reshape(2, 4) + 60
    latent = jnp.asarray([[[1, 2, 3], [4, 5, 6]], [[7, 0, 1], [2, 3, 4]]])
    seq = assemble(spec, prompt, prompt != 0, frames, future_ids=future, latent_ids=latent)
    assert set(spec.head_positions()) >= {"text", "vision", "latent"}
    llama = LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                        max_seq_len=64, tie_embeddings=tie)
    mcfg = VideoLlamaConfig(llama=llama, vision_vocab_size=102, latent_vocab_size=9, action_vocab_size=0,
                            action_dim=0)
    params = init_params(mcfg, jax.random.key(3))["params"]
    weights = {"text": 0.5, "vision": 1.0, "latent": 2.0}

    def total(p, chunk: int):
        model = VideoLlama(mcfg.replace(llama=dataclasses.replace(llama, loss_chunk=chunk)))
        heads = {} if chunk else spec.head_positions()
        out = model.apply({"params": p}, seq.ids, seq.family, head_positions=heads,
                          attention_mask=seq.attention_mask)
        assert (not out.logits) == bool(chunk)
        return objective.losses(spec, seq, out, {}, weights, model, p)

    (l0, m0), g0 = jax.jit(jax.value_and_grad(lambda p: total(p, 0), has_aux=True))(params)
    (l1, m1), g1 = jax.jit(jax.value_and_grad(lambda p: total(p, 3), has_aux=True))(params)
    np.testing.assert_allclose(l1, l0, atol=1e-5, rtol=1e-5)
    for k in m0:
        np.testing.assert_allclose(m1[k], m0[k], atol=1e-5, rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_benchmark_compare_lean_runs_interleaved(capsys) -> None:
    from latent_pretraining import benchmark

    assert benchmark.parse_lean("128, 0") == (128, 0)
    with pytest.raises(UserError, match="LOSS_CHUNK,KV_BLOCK"):
        benchmark.parse_lean("128")
    argv = ["--hidden", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--vocab", "64", "--seq", "12",
            "--batch", "1", "--steps", "1", "--rounds", "2", "--attention-chunk", "0", "--compare-lean", "5,4"]
    assert benchmark.train_step_main(argv) == 0
    out = capsys.readouterr().out
    assert "5,4: loss_chunk=5 attention_kv_block=4" in out
    lines = [line for line in out.splitlines() if "temporaries" in line]
    assert len(lines) == 2 and "CPU / base" in lines[1]
