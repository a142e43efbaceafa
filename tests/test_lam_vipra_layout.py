"""The ViPRA demo VLA layout (configs/vipra.py:demo) matches the code layout of the `vipra_demo` LAM it labels with:
transitions × stride span the action horizon, one LAM call per window, C = code_grid² codes of the LAM's codebook
per transition, and the in-step labelling fills exactly the layout's latent token slots."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from configs import lam as lam_configs
from configs import vipra as vipra_configs
from latent_pretraining import objective
from latent_pretraining.sequence import LATENT, LayoutSpec
from tests.shared_assets import random_labeler


def _pair():
    return vipra_configs.get_config("demo"), lam_configs.get_config("vipra_demo")


def test_latent_steps_span_the_horizon_in_one_lam_call() -> None:
    vla, lam = _pair()
    s, k, t = int(vla.layout.latent_steps), int(lam.data.offset), int(lam.data.clip_len)
    stride = int(vla.data.clip_stride) or k  # 0 = the LAM's own offset (latent_pretraining.train.build)
    assert stride == k, "the VLA must label transitions at the offset the LAM was trained on"
    # clip frames t, t+k, ..., t+S·k: the last is the future frame t+H ("latent state")
    assert s * stride == int(vla.data.horizon) == int(vla.layout.action_slots)
    assert s % (t - 1) == 0 and s // (t - 1) == 1  # objective.tokenize: S+1 frames in chunks of the LAM's T-1
    assert vla.model.latent_vocab_size in (0, int(lam.model.codebook_size) + 1)  # 0: LAM codebook + eola


def test_in_step_labels_fill_the_layout_latent_slots() -> None:
    vla, lam = _pair()
    lab, (fn, variables, info) = random_labeler("vipra_demo")
    c = int(lam.model.code_grid) ** 2
    assert info["codes_per_step"] == lab.codes == c == 16 and info["clip_len"] == int(lam.data.clip_len)
    s, b, g = int(vla.layout.latent_steps), 2, 4
    spec = LayoutSpec(prompt_len=4, num_frames=len(vla.data.history_offsets), tokens_per_frame=g, vision_codebook=16,
                      future_frame=True, latent_steps=s, codes_per_step=info["codes_per_step"],
                      latent_codebook=info["codebook_size"], latent_separator=bool(vla.layout.latent_separator),
                      action_slots=int(vla.layout.action_slots), bos_id=1, eos_id=2, pad_id=0)
    r = int(lam.model.image_size)
    clip = np.random.default_rng(0).integers(0, 256, (b, s + 1, r, r, 3), dtype=np.uint8)
    valid = np.array([[True] * (s + 1), [True] * s + [False]])
    batch = {"frame_ids": jnp.zeros((b, spec.num_frames, g), jnp.int32), "future_ids": jnp.zeros((b, g), jnp.int32),
             "clip": jnp.asarray(clip), "clip_valid": jnp.asarray(valid)}
    frozen = objective.Frozen(vision=None, latent_fn=fn, latent_clip_len=info["clip_len"])
    out = jax.jit(lambda w, x: objective.tokenize(frozen, w, x, spec))({"lam": variables}, batch)
    ids = np.asarray(out["latent"])
    assert ids.shape == (b, s, c) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < int(lam.model.codebook_size)
    np.testing.assert_array_equal(ids, np.asarray(lab(clip)))  # one call labels the whole window
    np.testing.assert_array_equal(np.asarray(out["latent_valid"]), valid[:, 1:])
    family = spec.template(action_row=False)[0]
    assert int(np.sum(family == LATENT)) == s * (c + 1)  # S × (16 codes + eola)
