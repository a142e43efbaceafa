"""policy.Policy: loads tiny checkpoints (ViPRA flow layout, LAPA action-bin layout) written by the training
Checkpointer with the assets `latent_pretraining.train` writes; returns finite de-normalized [H, 7] chunks,
deterministic per seed."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from vla_fixtures import write_tokenizers

from configs import vipra as vipra_configs
from core.errors import UserError
from latent_pretraining import train as vla_train
from latent_pretraining.model.video_llama import init_params
from latent_pretraining.training.checkpoint import Checkpointer
from latent_pretraining.training.loop import _config_json
from latent_pretraining.training.state import TrainState
from policy.action_tokenizer import bin_centers, decode_bins
from policy.metadata import PolicyMetadata
from policy.policy import Policy, gripper_postprocess

H = 6
BINS = 16
STATS = {"format": 1, "dataset": "demo_robot", "num_trajectories": 3, "num_transitions": 100,
         "num_action_transitions": 100,
         "action": {"mean": [0.5, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0], "std": [2.0, 0.5, 3.0, 1.0, 1.0, 1.0, 1.0],
                    "min": [-5.0] * 7, "max": [5.0] * 7, "q01": [-4.0] * 7, "q99": [4.0] * 7},
         "action_mask": [True, True, True, True, True, True, False]}
HUMAN = {**STATS, "dataset": "demo_human", "num_action_transitions": 0}


def _write_checkpoint(root, discrete: bool) -> str:
    """A checkpoint as `latent_pretraining.train` writes it (assets from `build`), with random params. `discrete`:
    the LAPA fine-tuning layout (7·H action-bin tokens in the action suffix) and an action_bins.json asset."""
    tok, vq_path = write_tokenizers(root)
    c = vipra_configs.get_config("debug")
    c.text.tokenizer, c.vision.tokenizer = tok, vq_path
    c.layout.update({"latent_steps": 2, "action_slots": H, "prompt_len": 32})
    c.data.horizon = H
    c.flow.steps = 4
    if discrete:
        c.model.action_vocab_size = BINS
    lam_info = {"codebook_size": 8, "codes_per_step": 4, "clip_len": 2, "offset": 1}
    setup = vla_train.build(c, (None, {"w": np.zeros(1, np.float32)}, lam_info))
    params = init_params(setup.model_config, jax.random.PRNGKey(0))["params"]
    params = jax.tree.map(lambda x: x * 10.0 if x.ndim == 2 else x, params)  # actions far from 0
    state = TrainState(step=jnp.asarray(7, jnp.int32), params=params, opt_state={}, rng=jax.random.PRNGKey(1),
                       ema_params=None, model_state={"frozen": setup.frozen_weights})
    assets = {**setup.assets, "config.json": _config_json(c),
              "norm_stats.json": {"mode": "normal", "datasets": {"demo_human": HUMAN, "demo_robot": STATS}}}
    if discrete:
        assets["layout.json"] = {**assets["layout.json"], "action_slots": 0, "action_tokens": 7 * H}
        edges = [np.linspace(-2.0, 2.0, BINS + 1).tolist() for _ in range(6)] + [[-0.5, 0.5, 1.5]]
        assets["action_bins.json"] = {"edges": edges, "normalized": True}
    ck = Checkpointer(str(root / "run" / "checkpoints"), async_save=False)
    ck.save(state, data_state={"x": 1}, assets=assets)
    ck.close()
    return str(root / "run")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return _write_checkpoint(tmp_path_factory.mktemp("policy"), discrete=False)


def test_policy_acts_deterministically_and_denormalizes(workdir: str) -> None:
    pol = Policy.from_checkpoint(workdir)
    meta = pol.metadata()
    assert meta["step"] == 7 and meta["chunk"] == H and meta["action_dim"] == 7
    assert meta["history_offsets"] == [-2, 0] and meta["image_size"] == 64 and meta["recipe"] == "vipra"
    assert "chunk_length" not in meta and "image_resolution" not in meta  # one name per field
    assert meta["gripper"] == {"dim": 6, "mode": "clip", "range": [-5.0, 5.0],
                               "source": "normalization statistics of 'demo_robot'"}
    assert PolicyMetadata.from_dict(meta) == pol.metadata_record()
    assert meta["dataset"] == "demo_robot" and meta["action_kind"] == "flow" and meta["sampler"]["steps"] == 4
    json.dumps(meta)
    from policy.serve import create_app

    create_app(pol, warmup=False)  # validates the metadata it needs
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    instr = "push the red block to the top left corner"
    pol.warmup()
    a = pol.act(frames, instr, seed=3)
    assert a.shape == (H, 7) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, pol.act(frames, instr, seed=3))  # same seed, same chunk
    assert np.abs(a - pol.act(frames, instr, seed=4)).max() > 1e-4
    y = pol.act_normalized(frames, instr, seed=3)
    mean, std = np.asarray(STATS["action"]["mean"]), np.asarray(STATS["action"]["std"])
    expect = np.where(STATS["action_mask"], y * (std + 1e-8) + mean, y)
    expect[:, 6] = np.clip(expect[:, 6], -5.0, 5.0)  # the gripper, clipped to the stats' [min, max]
    np.testing.assert_allclose(a, expect, rtol=1e-5, atol=1e-5)
    assert np.abs(a - y).max() > 0.1  # de-normalization was applied
    # a batch gives the rows' chunks (row 0 equals the single call), and other resolutions are resized
    batch = pol.act(np.stack([frames, frames[::-1]]), [instr, "move the blue block next to the green one"], seed=3)
    assert batch.shape == (2, H, 7)
    np.testing.assert_allclose(batch[0], a, atol=1e-5)
    big = pol.act(rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8), instr)
    assert big.shape == (H, 7) and np.all(np.isfinite(big))
    codes = pol.latent_actions(frames, instr)
    assert codes.shape == (2, 4) and codes.min() >= 0 and codes.max() < 8
    with pytest.raises(UserError, match="applies to action-bin policies"):
        Policy.from_checkpoint(workdir, bin_temperature=1.0)  # a flow chunk has no bins to sample
    for bad in (frames[:1], frames.astype(np.float32), frames[..., :2]):
        with pytest.raises(ValueError):
            pol.act(bad, instr)


def test_bin_decoding() -> None:
    centers = bin_centers({"edges": [[-1.0, 0.0, 1.0], [-0.5, 0.5, 1.5]]})
    np.testing.assert_allclose(centers[0], [-0.5, 0.5])
    np.testing.assert_allclose(centers[1], [0.0, 1.0])
    out = decode_bins(np.asarray([[0, 1, 1, 0, 9, -3]]), centers)
    np.testing.assert_allclose(out, [[[-0.5, 1.0], [0.5, 0.0], [0.5, 0.0]]])


def test_policy_decodes_action_bins(tmp_path) -> None:
    pol = Policy.from_checkpoint(_write_checkpoint(tmp_path, discrete=True))
    meta = pol.metadata()
    assert meta["action_kind"] == "bins" and meta["chunk"] == H and meta["action_dim"] == 7
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    y = pol.act_normalized(frames, "push the red block to the left")
    assert y.shape == (H, 7)
    centers = bin_centers({"edges": [np.linspace(-2.0, 2.0, BINS + 1).tolist()]})[0]
    assert np.isin(np.round(y[:, :6], 5), np.round(centers, 5)).all() and np.isin(y[:, 6], [0.0, 1.0]).all()
    a = pol.act(frames, "push the red block to the left", seed=123)  # greedy: the seed does not matter
    mean, std = np.asarray(STATS["action"]["mean"]), np.asarray(STATS["action"]["std"])
    np.testing.assert_allclose(a, np.where(STATS["action_mask"], y * (std + 1e-8) + mean, y), rtol=1e-5, atol=1e-5)
    # sampled bins (bin_temperature > 0): still bin centres, seeded (same seed, same chunk; other seeds differ)
    ck = pol.source
    hot = Policy.from_checkpoint(ck, bin_temperature=5.0)
    assert hot.metadata()["sampler"] == {"kind": "sample", "tokens": 7 * H, "temperature": 5.0}
    assert meta["sampler"] == {"kind": "greedy", "tokens": 7 * H}
    s3 = hot.act_normalized(frames, "push the red block to the left", seed=3)
    assert np.isin(np.round(s3[:, :6], 5), np.round(centers, 5)).all()
    np.testing.assert_array_equal(s3, hot.act_normalized(frames, "push the red block to the left", seed=3))
    others = [hot.act_normalized(frames, "push the red block to the left", seed=k) for k in (4, 5)]
    assert any(np.abs(o - s3).max() > 0 for o in others) and np.abs(s3 - y).max() > 0
    with pytest.raises(UserError, match="bin_temperature must be >= 0"):
        Policy.from_checkpoint(ck, bin_temperature=-1.0)


# ---------------------------------------------------------------------------------------------------- gripper
BRIDGE = {"dataset": "bridge", "num_action_transitions": 10,
          "action": {"mean": [0.0] * 6 + [0.6], "std": [0.01] * 6 + [0.5], "min": [-0.1] * 6 + [0.0],
                     "max": [0.1] * 6 + [1.0]},
          "action_mask": [True] * 6 + [False]}


def _bare_policy(y: np.ndarray, **gripper) -> Policy:
    """A Policy with only what act() needs after the model: stats and a fixed normalized chunk `y`."""
    pol = Policy.__new__(Policy)
    pol.policy_info, pol.action_dim, pol.dataset = {}, 7, "bridge"
    pol.stats, pol.norm_mode, pol.bins_normalized = BRIDGE, "normal", True
    pol.gripper = pol._gripper_setup(gripper.get("mode"), gripper.get("rng"), gripper.get("dim"))
    pol.act_normalized = lambda images, instruction, seed=0: y
    return pol


def test_gripper_clipped_or_binarized_to_the_dataset_range() -> None:
    # a ViPRA flow head on Bridge returned grippers 1.20 and -0.14; the gripper is not normalized (mask False)
    y = np.zeros((4, 7), np.float32)
    y[:, 6] = [1.20, -0.14, 0.40, 0.50]
    y[:, 0] = [1.0, -2.0, 0.0, 0.0]  # a normalized arm dim: de-normalized, never clipped
    clip = _bare_policy(y).act(None, "x")
    np.testing.assert_allclose(clip[:, 6], [1.0, 0.0, 0.40, 0.50], atol=1e-6)
    np.testing.assert_allclose(clip[:, 0], [0.01, -0.02, 0.0, 0.0], atol=1e-6)
    binar = _bare_policy(y, mode="binarize").act(None, "x")
    np.testing.assert_array_equal(binar[:, 6], [1.0, 0.0, 0.0, 1.0])  # threshold 0.5 (the midpoint) -> open
    explicit = _bare_policy(y, rng=(-1.0, 0.3)).act(None, "x")
    np.testing.assert_allclose(explicit[:, 6], [0.3, -0.14, 0.3, 0.3], atol=1e-6)
    np.testing.assert_allclose(_bare_policy(y, mode="none").act(None, "x")[:, 6], y[:, 6])
    pol = _bare_policy(y)
    assert pol.gripper == {"dim": 6, "mode": "clip", "range": [0.0, 1.0],
                           "source": "normalization statistics of 'bridge'"}
    np.testing.assert_array_equal(y[:, 6], np.float32([1.20, -0.14, 0.40, 0.50]))  # the model output is not modified
    # batches: the last axis is the action
    np.testing.assert_allclose(gripper_postprocess(np.stack([y, y]), 6, "clip", 0.0, 1.0)[1, :, 6], clip[:, 6])
    with pytest.raises(UserError, match="did you mean 'binarize'"):
        _bare_policy(y, mode="binarise")
    with pytest.raises(UserError, match="lo <= hi"):
        _bare_policy(y, rng=(1.0, 0.0))
    with pytest.raises(UserError, match="outside the 7 action dimensions"):
        _bare_policy(y, dim=7)


def test_gripper_without_a_range_is_left_alone() -> None:
    pol = _bare_policy(np.full((2, 7), 3.0, np.float32))
    pol.stats = None
    assert pol._gripper_setup(None, None, None)["mode"] == "none"
    pol.action_dim = 2
    assert pol._gripper_setup(None, None, None)["source"] == "no gripper dimension (action_dim != 7)"
