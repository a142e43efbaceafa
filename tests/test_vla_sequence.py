"""Sequence layouts token by token, loss masks (no loss on prompt/history, shifted discrete targets, unshifted action
slots), head positions and the per-head cross-entropy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from latent_pretraining import objective
from latent_pretraining.model.video_llama import ACTION, LATENT, TEXT, VISION
from latent_pretraining.sequence import HEAD_FAMILIES, LayoutSpec, action_weights, assemble, describe, head_targets

BOS, EOS, PAD = 1, 2, 0
G, VQ, LAM_K = 4, 100, 8  # tokens per frame, VQGAN codebook (eof 100, eov 101), LAM codebook (separator 8)


def _vipra(**kw) -> LayoutSpec:
    args = dict(prompt_len=5, num_frames=2, tokens_per_frame=G, vision_codebook=VQ, future_frame=True,
                latent_steps=2, codes_per_step=3, latent_codebook=LAM_K, latent_separator=True, action_slots=2,
                bos_id=BOS, eos_id=EOS, pad_id=PAD, video_open=(30, 31), video_close=(32,), action_open=(40, 41),
                action_close=(42,))
    return LayoutSpec(**{**args, **kw})


def _lapa() -> LayoutSpec:
    return LayoutSpec(prompt_len=4, num_frames=1, tokens_per_frame=G, vision_codebook=VQ, future_frame=False,
                      latent_steps=1, codes_per_step=4, latent_codebook=LAM_K, latent_separator=False, action_slots=0,
                      bos_id=BOS, eos_id=EOS, pad_id=PAD, video_open=(30,), video_close=(32,))


def _inputs(b: int = 2):
    prompt = jnp.asarray([[0, 0, BOS, 7, 9], [BOS, 5, 6, 7, 9]][:b])
    pmask = prompt != 0
    frames = jnp.arange(b * 2 * G).reshape(b, 2, G) + 10
    future = jnp.arange(b * G).reshape(b, G) + 60
    latent = jnp.asarray([[[1, 2, 3], [4, 5, 6]], [[7, 0, 1], [2, 3, 4]]][:b])
    return prompt, pmask, frames, future, latent


def test_lapa_layout_token_by_token() -> None:
    spec = _lapa()
    prompt = jnp.asarray([[0, BOS, 7, 9]])
    frames = jnp.asarray([[[11, 12, 13, 14]]])
    seq = assemble(spec, prompt, prompt != 0, frames, latent_ids=jnp.asarray([[[3, 0, 7, 1]]]))
    want = [0, BOS, 7, 9, 11, 12, 13, 14, VQ + 1, 30, 3, 0, 7, 1, 32, EOS]
    assert spec.length == len(want) and seq.ids[0].tolist() == want
    fam = [TEXT] * 4 + [VISION] * 5 + [TEXT] + [LATENT] * 4 + [TEXT] * 2
    assert seq.family[0].tolist() == fam
    # no loss on the prompt or the frame; loss on markers, the 4 codes and EOS
    assert seq.loss_mask[0].tolist() == [False] * 9 + [True] * 7
    assert seq.attention_mask[0].tolist() == [0] + [1] * 15
    assert describe(spec) == ["prompt[4]", "frame0[4]+eov", "text[30]", "latent0[4]", "text[32]", "eos"]
    pos = spec.head_positions()
    assert pos["latent"].tolist() == [9, 10, 11, 12]  # shifted: the code at 10 is predicted at 9
    assert pos["text"].tolist() == [8, 13, 14] and "vision" not in pos


def test_vipra_layout_video_and_action_rows() -> None:
    spec = _vipra()
    prompt, pmask, frames, future, latent = _inputs()
    seq = assemble(spec, prompt, pmask, frames, future_ids=future, latent_ids=latent,
                   latent_valid=jnp.asarray([[True, False], [True, True]]),
                   action_row=jnp.asarray([False, True]), action_mask=jnp.asarray([[True, True], [True, False]]))
    eof, eov, sep = VQ, VQ + 1, LAM_K
    f = np.asarray(frames)
    video = [0, 0, BOS, 7, 9, *f[0, 0].tolist(), eof, *f[0, 1].tolist(), eof, *np.asarray(future)[0].tolist(), eov,
             30, 31, 1, 2, 3, sep, 4, 5, 6, sep, 32, EOS]
    assert seq.ids[0].tolist() == video and spec.length == len(video)
    n_act = 5 + 2 * (G + 1) + 2 + 2 + 1 + 1
    action = [BOS, 5, 6, 7, 9, *f[1, 0].tolist(), eof, *f[1, 1].tolist(), eov, 40, 41, 0, 0, 42, EOS]
    assert seq.ids[1, :n_act].tolist() == action
    assert seq.ids[1, n_act:].tolist() == [PAD] * (spec.length - n_act)
    assert seq.attention_mask[1, n_act:].tolist() == [0] * (spec.length - n_act)
    # loss masks: prompt and history frames never; the second transition of row 0 ran off the episode end
    lm = np.asarray(seq.loss_mask)
    pre = spec.prefix_len
    assert not lm[:, :pre].any()
    assert lm[0, pre:pre + G + 1].all()  # future frame + eov
    lat = spec.latent_start
    assert lm[0, lat:lat + 4].all() and not lm[0, lat + 4:lat + 8].any()
    assert lm[1, spec.action_positions].tolist() == [True, False]  # unshifted slots, masked by action_pad_mask
    assert np.asarray(seq.family)[1, spec.action_positions].tolist() == [ACTION, ACTION]
    assert np.asarray(action_weights(seq, spec)).tolist() == [[False, False], [True, False]]
    assert describe(spec, action_row=True)[1:3] == ["frame0[4]+eof", "frame1[4]+eov"]


def test_head_targets_are_the_next_tokens_with_loss() -> None:
    spec = _vipra()
    prompt, pmask, frames, future, latent = _inputs()
    seq = assemble(spec, prompt, pmask, frames, future_ids=future, latent_ids=latent,
                   action_row=jnp.asarray([False, True]))
    ids, fam, lm = (np.asarray(x) for x in (seq.ids, seq.family, seq.loss_mask))
    for head, pos in spec.head_positions().items():
        tgt, w = (np.asarray(x) for x in head_targets(seq, pos, HEAD_FAMILIES[head]))
        np.testing.assert_array_equal(tgt, ids[:, pos + 1])
        # every scored (position+1) token of this family appears, and nothing else
        want = lm[:, 1:] & (fam[:, 1:] == HEAD_FAMILIES[head])
        got = np.zeros_like(want)
        got[:, pos] = w
        np.testing.assert_array_equal(got, want)


def test_bidirectional_block_and_row_defaults() -> None:
    spec = _vipra(bidirectional_actions=True)
    prompt, pmask, frames, future, latent = _inputs()
    seq = assemble(spec, prompt, pmask, frames, future_ids=future, latent_ids=latent,
                   action_row=jnp.asarray([False, True]))
    assert np.asarray(seq.block_ids)[1, spec.action_positions].tolist() == [1, 1]
    assert not np.asarray(seq.block_ids)[0].any()
    # an action-only layout (ViPRA fields_ca) makes every row an action row
    only = _vipra(future_frame=False, latent_steps=0)
    s2 = assemble(only, prompt, pmask, frames)
    assert np.asarray(s2.action_row).all() and only.length == only.prefix_len + only.action_suffix_len
    with pytest.raises(ValueError, match="latent_ids"):
        assemble(spec, prompt, pmask, frames, future_ids=future)


def test_cross_entropy_per_row_mean_ignores_empty_rows() -> None:
    logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.2, 0.8]]]))
    targets = jnp.asarray([[0, 0], [1, 1]])
    w = jnp.asarray([[True, True], [False, False]])
    loss, acc, n = objective.cross_entropy(logits, targets, w)
    np.testing.assert_allclose(float(loss), -(np.log(0.5) + np.log(0.9)) / 2, rtol=1e-6)
    assert float(acc) == 1.0 and float(n) == 2
