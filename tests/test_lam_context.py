"""LAM decoder context frame (`model.decoder.context`): off is the old model, on feeds the decoder (never the encoder)
the motion into each transition's first frame; data clips lead with frame t − offset clamped to the episode's start."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lam as lam_configs
from lam import config as lam_config
from lam import data as lam_data
from lam import train
from lam.label import Labeler
from lam.model import LatentActionModel
from lam.stabilize import stabilize


def _cfg(preset: str, context: int):
    c = lam_configs.get_config(preset)
    c.data.cache_dir = ""
    c.model.decoder.context = context
    return c


def _clip(cfg, frames: int, b: int = 2, seed: int = 0) -> np.ndarray:
    r = cfg.model.image_size
    return np.random.default_rng(seed).integers(0, 256, (b, frames, r, r, 3), dtype=np.uint8)


def _apply(cfg, variables, clip):
    model = LatentActionModel(cfg.model.copy_and_resolve_references())
    return jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(clip, jnp.float32) / 255.0)


def _init(cfg):
    """Jitted: an eager Flax init dispatches (and on a cold compilation cache compiles) every op on its own."""
    return jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))


def _without(variables, name: str):
    return {**variables, "params": {k: v for k, v in variables["params"].items() if k != name}}


@pytest.mark.parametrize("preset", ["lapa_tiny", "vipra_tiny"])
def test_context_off_is_the_old_model_and_on_adds_only_the_context_stem(preset: str) -> None:
    off, on = _cfg(preset, 0), _cfg(preset, 1)
    legacy = lam_configs.get_config(preset)  # a saved run's config from before the field: decoder without 'context'
    legacy.data.cache_dir = ""
    del legacy.model.decoder["context"]
    v_off, v_legacy, v_on = (_init(c) for c in (off, legacy, on))
    assert jax.tree.structure(v_off) == jax.tree.structure(v_legacy)
    jax.tree.map(np.testing.assert_array_equal, v_off, v_legacy)
    # context=1 adds one decoder module and leaves every other parameter as it was (Flax seeds per module name)
    assert sorted(v_on["params"]) == sorted([*v_off["params"], "context_stem"])
    jax.tree.map(np.testing.assert_array_equal, _without(v_on, "context_stem"), v_off)
    clip = _clip(off, off.data.clip_len)
    a, b = _apply(off, v_off, clip), _apply(legacy, v_legacy, clip)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert lam_config.from_saved(legacy.to_dict()).model.decoder.context == 0  # old runs load as context 0


@pytest.mark.parametrize("preset", ["lapa_tiny", "vipra_tiny"])
def test_the_context_frame_reaches_the_decoder_only(preset: str) -> None:
    cfg = _cfg(preset, 1)
    v = _init(cfg)
    # the residual decoder's zero-initialised output layers would hide every token change at init (random, not a
    # constant: a constant kernel only sums the layer-normed tokens, which is zero)
    noise = lambda t, s: jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(s), x.shape), t)
    v = {**v, "params": {**v["params"], "to_pixels": noise(v["params"]["to_pixels"], 1),
                         "to_flow": noise(v["params"]["to_flow"], 2)}}
    clip = _clip(cfg, 1 + cfg.data.clip_len)
    other = clip.copy()
    other[:, 0] = _clip(cfg, 1, seed=1)[:, 0]  # only the context frame differs
    a, b = _apply(cfg, v, clip), _apply(cfg, v, other)
    np.testing.assert_array_equal(a["z"], b["z"])  # the encoder never reads it: same code vectors and ids
    np.testing.assert_array_equal(a["ids"], b["ids"])
    assert float(jnp.abs(a["pred"] - b["pred"]).max()) > 1e-3  # the decoder does
    assert float(jnp.abs(a["flow"] - b["flow"]).max()) > 1e-3  # and the flow head, from the same tokens
    assert a["pred"].shape[1] == cfg.data.clip_len - 1
    # the transition clip's ids equal the labeler's on the clip without its context frame
    np.testing.assert_array_equal(np.asarray(Labeler(cfg, v)(clip[:, 1:])).reshape(a["ids"].shape), a["ids"])
    # and the stem learns from the reconstruction: gradients reach it through the (detached) decoder queries
    loss_fn = train.make_loss_fn(cfg)
    ms = {k: x for k, x in v.items() if k != "params"}
    g = jax.jit(jax.grad(lambda p: loss_fn(p, {"clip": jnp.asarray(clip)}, jax.random.PRNGKey(1), ms)[0]))(v["params"])
    assert float(jnp.abs(g["context_stem"]["conv0"]["kernel"]).sum()) > 0
    model = LatentActionModel(cfg.model)
    codes = jnp.zeros((1, 1, cfg.model.code_grid, cfg.model.code_grid, cfg.model.quant_dim))
    frames = jnp.zeros((1, 1, cfg.model.image_size, cfg.model.image_size, 3))
    with pytest.raises(ValueError, match="no context frame"):
        model.apply(v, frames, codes, method=LatentActionModel.decode)


def test_labelling_does_not_depend_on_the_field() -> None:
    on = _cfg("lapa_tiny", 1)
    v_on = _init(on)
    clip = _clip(on, on.data.clip_len, b=3)  # what the VLA and the label caches feed: clip_len frames, no context
    ids_on = np.asarray(Labeler(on, v_on)(clip))
    ids_off = np.asarray(Labeler(_cfg("lapa_tiny", 0), _without(v_on, "context_stem"))(clip))
    np.testing.assert_array_equal(ids_on, ids_off)
    from lam.api import abstract_latent_labeler, encoder_only

    _, kept, info = encoder_only(abstract_latent_labeler(on), frame_size=on.model.image_size)
    assert info["clip_len"] == on.data.clip_len and "context_stem" not in kept["params"]  # decoder-only: pruned


def _table(lens: list[int]) -> lam_data.Table:
    """Frames whose pixels hold their global step index, effector x = 10·index (a readable ground truth)."""
    n = sum(lens)
    steps = np.arange(n)
    frames = np.broadcast_to(steps[:, None, None, None].astype(np.uint8), (n, 4, 4, 3)).copy()
    eff = np.stack([10.0 * steps, np.zeros(n)], -1).astype(np.float32)
    flow = np.broadcast_to(np.array([1.0, 0.0], np.float16), (n, 4, 4, 2)).copy()  # 1 px right per step
    start = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    return lam_data.Table(frames=frames, effector=eff, flow=flow, action=np.zeros((n, 2), np.float32),
                          action_valid=np.ones(n, bool), episode_start=start, episode_len=np.array(lens, np.int64),
                          episode_dataset=np.zeros(len(lens), np.int32), episode_index=np.arange(len(lens)),
                          datasets=("d",))


def test_clips_lead_with_the_frame_one_offset_earlier_clamped_at_the_episode_start() -> None:
    table = _table([10, 7])  # episode 0: global steps 0..9; episode 1: 10..16
    eps, starts = np.array([0, 0, 0, 1, 1]), np.array([0, 2, 5, 0, 5])
    # offset 3, clip_len 2: frames (t-3 clamped to 0, t, t+3 clamped to the end), by hand:
    #   ep 0 t=0: (0, 0, 3); t=2: (0, 2, 5); t=5: (2, 5, 8); ep 1 t=0: (10, 10, 13); t=5: (12, 15, 16)
    want = [[0, 0, 3], [0, 2, 5], [2, 5, 8], [10, 10, 13], [12, 15, 16]]
    np.testing.assert_array_equal(lam_data.clip_indices(table, eps, starts, 2, 3, context=1), want)
    np.testing.assert_array_equal(lam_data.clip_indices(table, eps, starts, 2, 3),
                                  np.array(want)[:, 1:])  # context 0: the old clips
    b = lam_data.make_batch(table, eps, starts, 2, 3, with_flow=True, context=1)
    assert b["clip"].shape == (5, 3, 4, 4, 3)
    np.testing.assert_array_equal(b["clip"][:, :, 0, 0, 0], want)
    # the ground truth is the transition's, never the context's: effector of frames t and t+3, flow t → t+3
    np.testing.assert_array_equal(b["effector"][:, :, 0], 10.0 * np.array(want)[:, 1:])
    assert b["flow"].shape == (5, 1, 4, 4, 2)
    np.testing.assert_array_equal(b["flow"][:, 0, 0, 0, 0], [3, 3, 3, 3, 1])  # ep 1 t=5: clamped, one step left
    # Farneback targets (data without ground-truth flow) are likewise between the clip's frames, not the context's
    from lam.flow_targets import WithFlow

    fb = next(WithFlow(iter([{"clip": b["clip"]}]), context=1))["flow"]
    assert fb.shape == (5, 1, 4, 4, 2)  # one pair (t, t+3); with the context frame counted it would be two
    # the sampler draws the same transitions with or without the context frame
    s0 = lam_data.ClipSampler(table, batch_size=6, clip_len=2, offset=3, seed=4)
    s1 = lam_data.ClipSampler(table, batch_size=6, clip_len=2, offset=3, seed=4, context=1)
    a, c = next(s0), next(s1)
    np.testing.assert_array_equal(c["clip"][:, 1:], a["clip"])
    np.testing.assert_array_equal(c["effector"], a["effector"])


def test_stabilize_registers_to_the_first_transition_frame() -> None:
    x = jnp.asarray(_clip(_cfg("lapa_tiny", 0), 3, b=1), jnp.float32) / 255.0
    reg, shifts = stabilize(x, reference=1)
    np.testing.assert_allclose(reg[:, 1:], stabilize(x[:, 1:])[0], atol=1e-6)  # as the labeler registers the clip
    assert float(jnp.abs(shifts[:, 1]).max()) < 1e-6  # the reference frame does not move


def test_config_refuses_what_cannot_work_and_the_fingerprint_follows_the_field(demo_data) -> None:
    cfg = _cfg("lapa_tiny", 2)
    with pytest.raises(ValueError, match=r"decoder\.context must be 0"):
        lam_config.check(cfg)
    cfg = _cfg("lapa_tiny", 1)
    cfg.data.source, cfg.data.root = "pipeline", demo_data
    with pytest.raises(ValueError, match=r"needs data\.source='memory'"):
        train.make_data(cfg)  # refused, not silently trained without the context frame
    cfg.data.source = "memory"
    on = lam_data.config_fingerprint(cfg)
    cfg.model.decoder.context = 0
    off = lam_data.config_fingerprint(cfg)
    del cfg.model.decoder["context"]
    assert on != off and lam_data.config_fingerprint(cfg) == off  # runs without the field resume as before


def test_context_run_trains_evaluates_and_labels(demo_data, tmp_path) -> None:
    from lam import evaluate as lam_eval
    from lam.label import load_lam, write_cache

    cfg = _cfg("lapa_tiny", 1)
    cfg.data.root, cfg.data.batch_size = demo_data, 8
    cfg.model.stabilize = True  # the registration reference moves to the first transition frame
    cfg.train.total_steps = 3
    cfg.eval.batches, cfg.eval.batch_size, cfg.eval.transfer_episodes, cfg.eval.transfer_steps = 2, 8, 1, 2
    res = train.train(cfg, str(tmp_path / "run"), overwrite=True)
    assert res.step == 3 and math.isfinite(res.metrics["loss"]) and math.isfinite(res.metrics["flow"])
    m = lam_eval.evaluate(str(tmp_path / "run"))
    assert math.isfinite(m["recon/psnr"]) and 0.0 <= m["probe/direction_acc"] <= 1.0
    assert {"reconstructions", "latent_transfer"} <= set(m["plots"])
    loaded, variables = load_lam(str(tmp_path / "run"))
    assert loaded.model.decoder.context == 1
    z = np.load(write_cache(Labeler(loaded, variables), demo_data, "demo_robot", "val", str(tmp_path / "labels")))
    assert z["ids"].shape[1] == loaded.model.code_grid**2
