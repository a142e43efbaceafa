"""The effector state (proprio) as a policy input (`model.proprio_dim`): the layout's proprio slot, a tiny fine-tune
that trains and acts with it, one clear error when `act` gets no state, and the hand check that the state the
evaluator passes is the dataset's proprio for the same world state, normalized as the training pipeline does."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from shared_assets import DEMO_DATA
from vla_fixtures import write_tokenizers

from core.errors import UserError
from latent_pretraining.model.heads import PROPRIO, VISION
from latent_pretraining.sequence import LayoutSpec, assemble, describe

PROMPT, FRAMES, G = 4, 2, 3


def _spec(proprio_slots: int) -> LayoutSpec:
    return LayoutSpec(prompt_len=PROMPT, num_frames=FRAMES, tokens_per_frame=G, vision_codebook=16,
                      future_frame=False, latent_steps=0, codes_per_step=0, latent_codebook=0,
                      latent_separator=False, action_slots=2, bos_id=1, eos_id=2, pad_id=0, action_open=(5,),
                      action_close=(6,), proprio_slots=proprio_slots)


def test_the_proprio_slot_follows_the_frames_and_carries_the_state() -> None:
    off, on = _spec(0), _spec(1)
    slot = PROMPT + FRAMES * (G + 1)  # right after the last frame's terminator
    assert on.prefix_len == off.prefix_len + 1 and on.length == off.length + 1
    assert on.proprio_positions.tolist() == [slot] and off.proprio_positions.size == 0
    assert on.action_positions.tolist() == [p + 1 for p in off.action_positions.tolist()]
    fam, loss, _ = on.template(True)
    assert fam[slot] == PROPRIO and fam[slot - 1] == VISION and not loss[slot]
    assert describe(on, True)[FRAMES + 1] == "proprio" and "proprio" not in describe(off, True)
    b = 2
    args = (jnp.ones((b, PROMPT), jnp.int32), jnp.ones((b, PROMPT), bool), jnp.zeros((b, FRAMES, G), jnp.int32))
    with pytest.raises(ValueError, match="proprio slot: pass proprio"):
        assemble(on, *args)
    state = jnp.asarray([[0.5, -1.0], [2.0, 3.0]])
    seq = assemble(on, *args, proprio=state)
    assert seq.proprio.shape == (b, 1, 2) and seq.family[0, slot] == PROPRIO and seq.attention_mask[0, slot] == 1
    kw = seq.model_inputs()
    assert kw["proprio_positions"] == (slot,)
    np.testing.assert_array_equal(kw["proprio"][:, 0], state)
    assert seq.model_inputs(slot) == {}  # a prefix that stops before the slot has no proprio to feed
    assert assemble(off, *args).model_inputs() == {}  # the old layout is unchanged


def test_act_normalizes_the_raw_state_like_the_pipeline_and_refuses_a_missing_one() -> None:
    """`Policy.normalize_proprio` (what `act` does with `proprio=`) on hand-worked numbers, without a checkpoint: the
    default-tier counterpart of the two slow tests below, which check the same on a trained policy."""
    from policy.evaluate import world_state
    from policy.policy import Policy

    pol = object.__new__(Policy)  # only the three fields normalize_proprio reads
    pol.proprio_dim, pol.norm_mode = 2, "normal"
    mask = [True, True] + [False] * 6
    pol.stats = {"proprio": {"mean": [1.0, -2.0] + [0.0] * 6, "std": [2.0, 4.0] + [1.0] * 6}, "proprio_mask": mask}
    # (3 - 1) / 2 = 1 and (2 - -2) / 4 = 1 (the std's 1e-8 epsilon is below float32 resolution here)
    np.testing.assert_allclose(pol.normalize_proprio([3.0, 2.0], 1), [[1.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(pol.normalize_proprio([[3.0, 2.0], [1.0, -6.0]], 2), [[1.0, 1.0], [0.0, -1.0]],
                               rtol=1e-6)
    with pytest.raises(UserError, match="takes the effector state as input"):
        pol.normalize_proprio(None, 1)
    with pytest.raises(UserError, match="proprio must be"):
        pol.normalize_proprio([1.0], 1)  # fewer values than proprio_dim
    with pytest.raises(UserError, match="non-finite"):
        pol.normalize_proprio([np.nan, 0.0], 1)
    # the evaluator's side: the world's raw state, as the RLDS writer stores it
    np.testing.assert_array_equal(world_state({"state": [0.25, 0.75]}), np.float32([0.25, 0.75]))
    with pytest.raises(ValueError, match="no 'state'"):
        world_state({"image": None})


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_data) -> dict:
    """A 2-step `vipra_debug` fine-tune with model.proprio_dim = 2 on the session's demo data."""
    from configs import policy as policy_configs
    from policy.finetune import finetune

    root = tmp_path_factory.mktemp("proprio")
    tok, vq_path = write_tokenizers(root)
    c = policy_configs.get_config("vipra_debug")
    c.text.tokenizer, c.vision.tokenizer, c.data.root = tok, vq_path, demo_data
    c.model.proprio_dim = 2
    c.data.shuffle_buffer, c.data.eval_batches = 64, 1
    c.train.total_steps, c.train.optimizer.warmup_steps = 2, 1
    c.train.checkpoint.async_save, c.train.log.progress, c.train.log.tensorboard = False, "off", False
    c.policy.eval_episodes = 0
    workdir = str(root / "run")
    summary = finetune(c, workdir, overwrite=True)
    return {"workdir": workdir, "summary": summary, "data": demo_data}


@pytest.mark.slow  # a 2-step fine-tune on the session's demo data (~1-2 min on 2 shared cores)
def test_a_tiny_policy_trains_and_acts_with_the_state(run) -> None:
    from policy.evaluate import evaluate
    from policy.policy import Policy

    assert np.isfinite(run["summary"]["eval"]["loss_flow"])
    with open(os.path.join(run["workdir"], "checkpoints", "2", "assets", "layout.json")) as f:
        assert json.load(f)["proprio_slots"] == 1  # what tells a loaded policy it needs the state
    pol = Policy.from_checkpoint(run["workdir"])
    assert pol.metadata()["proprio_dim"] == 2 and pol.model_config.proprio_dim == 2
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    text = "move to the red block"
    with pytest.raises(UserError) as e:
        pol.act(frames, text)
    assert "\n" not in str(e.value) and "pass proprio=" in str(e.value) and "proprio_dim 2" in str(e.value)
    with pytest.raises(UserError, match="proprio must be"):
        pol.act(frames, text, proprio=np.zeros(9, np.float32))
    a = pol.act(frames, text, proprio=np.asarray([0.2, 0.3], np.float32), seed=1)
    b = pol.act(frames, text, proprio=np.asarray([0.8, 0.7], np.float32), seed=1)
    assert a.shape == (6, 7) and np.all(np.isfinite(a))
    assert np.abs(a - b).max() > 1e-7  # the state reaches the action (same frames, text and noise)
    res = evaluate(pol, episodes=1, seed=5000, max_steps=4, progress=False)  # the evaluator passes the state
    assert res["episodes"] == 1


@pytest.mark.slow  # a 2-step fine-tune on the session's demo data (~1-2 min on 2 shared cores)
def test_the_evaluator_passes_the_datasets_proprio_normalized_as_in_training(run) -> None:
    """Hand check: episode 0 of the demo data, world seed from its metadata. The evaluator's state at t = 0 equals
    the dataset's raw proprio at t = 0 (the writer stores obs["state"]); the policy's normalization of every raw
    state equals the pipeline's normalized proprio of the same step (every row of a training batch is found)."""
    from data.episodes import EpisodeSource, iter_episodes
    from latent_pretraining import train as vla_train
    from policy.evaluate import evaluate, world_config_from_dataset
    from policy.policy import Policy

    path = os.path.join(run["data"], "demo_robot", "1.0.0")
    eps = list(iter_episodes(EpisodeSource(run["data"], "demo_robot", split="train"), 64, decode=False))
    assert len(eps) == DEMO_DATA["episodes"]
    ep = eps[0]
    seed = int(ep.source_id)  # episode_metadata/episode_id = f"{world seed:010d}"

    class Recorder:
        def __init__(self) -> None:
            self.states: list[np.ndarray] = []

        def metadata(self) -> dict:
            return {"image_size": 64, "history_offsets": [0], "action_dim": 7, "chunk": 1, "proprio_dim": 2}

        def reset(self) -> None:
            pass

        def act(self, images, instruction, *, seed=0, proprio=None) -> np.ndarray:
            self.states.append(np.array(proprio))
            return np.zeros((1, 7), np.float32)

    rec = Recorder()
    evaluate(rec, episodes=1, seed=seed, world_config=world_config_from_dataset(path), max_steps=2, progress=False)
    np.testing.assert_array_equal(rec.states[0], ep.proprio[0, :2])
    assert np.all(ep.proprio[:, 2:] == 0) and np.ptp(ep.proprio[:, :2], axis=0).min() > 0  # xy, padded, moving

    pol = Policy.from_checkpoint(run["workdir"])
    raw = np.concatenate([e.proprio for e in eps])  # f32[sum T, 8]
    mine = pol.normalize_proprio(raw[:, :2], len(raw))  # the policy takes the state as the world gives it
    stats = pol.stats["proprio"]
    hand = (raw[:, :2] - np.asarray(stats["mean"][:2])) / (np.asarray(stats["std"][:2]) + 1e-8)
    np.testing.assert_allclose(mine, hand, rtol=1e-5, atol=1e-6)
    cfg = pol.config
    cfg.data.root = run["data"]
    cfg.data.shuffle_buffer = 64
    setup = vla_train.build(cfg, None)
    batch = next(vla_train.make_data(setup, "train", seed=0))
    rows = np.asarray(batch.proprio)[:, :2]
    dist = np.abs(rows[:, None, :] - mine[None]).max(-1).min(1)
    assert dist.max() < 1e-5, dist  # every training row's proprio is the policy's normalization of a raw state
    assert np.ptp(rows, axis=0).min() > 0.1  # and the rows are not all the same state
