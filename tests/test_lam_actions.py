"""Action supervision of the LAM (`loss.action_weight`, `model.action_head`, `data.action_episodes`): a few labelled
episodes' actions, predicted from the quantized codes (the semi-supervised remedy for distractors). Off is the old
model; the targets and the labelled set are checked against hand-worked values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lam as lam_configs
from lam import config as lam_config
from lam import data as lam_data
from lam import losses, train


def _table(lens: list[int], datasets: list[int], with_actions: list[bool]) -> lam_data.Table:
    """Episode e of dataset datasets[e]; action of global step n = (n, 2n) where the episode has actions."""
    n = sum(lens)
    start = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    ep_of_step = np.repeat(np.arange(len(lens)), lens)
    valid = np.asarray(with_actions)[ep_of_step]
    steps = np.arange(n, dtype=np.float32)
    action = np.where(valid[:, None], np.stack([steps, 2 * steps], -1), 0.0).astype(np.float32)
    index = np.array([sum(1 for d in datasets[:e] if d == datasets[e]) for e in range(len(lens))], np.int64)
    return lam_data.Table(frames=np.zeros((n, 4, 4, 3), np.uint8), effector=np.zeros((n, 2), np.float32), flow=None,
                          action=action, action_valid=valid, episode_start=start, episode_len=np.array(lens, np.int64),
                          episode_dataset=np.array(datasets, np.int32), episode_index=index, datasets=("r", "h"))


def test_transition_targets_are_the_mean_action_over_the_transition_by_hand() -> None:
    table = _table([10, 7], [0, 0], [True, True])  # global steps 0..9 and 10..16
    idx = lam_data.clip_indices(table, np.array([0, 1, 1]), np.array([2, 0, 5]), 2, 3)
    np.testing.assert_array_equal(idx, [[2, 5], [10, 13], [15, 16]])  # the last one clamped at the episode's end
    got = lam_data.transition_actions(lam_data.action_cumsum(table), idx, np.array([1.0, 2.0]))
    # steps 2, 3, 4 -> mean (3, 6); 10, 11, 12 -> (11, 22); 15 alone -> (15, 30); the second dimension / 2
    np.testing.assert_allclose(got[:, 0], [[3, 3], [11, 11], [15, 15]])
    assert got.shape == (3, 1, 2) and got.dtype == np.float32


def test_only_the_first_episodes_with_actions_are_labelled() -> None:
    # dataset 0 (robot): episodes 0, 1, 3; dataset 1 (human, no actions): episodes 2, 4
    table = _table([4, 4, 4, 4, 4], [0, 0, 1, 0, 1], [True, True, False, True, False])
    labelled, scale = lam_data.action_labels(table, 2)
    np.testing.assert_array_equal(labelled, [True, True, False, False, False])
    steps = np.arange(8, dtype=np.float64)  # the labelled episodes' steps: the scale is their actions' std
    np.testing.assert_allclose(scale, [steps.std(), (2 * steps).std()])
    np.testing.assert_array_equal(lam_data.action_labels(table, 0)[0], [True, True, False, True, False])
    with pytest.raises(ValueError, match="no episode with actions"):
        lam_data.action_labels(_table([4], [1], [False]), 0)
    sampler = lam_data.ClipSampler(table, batch_size=64, clip_len=2, offset=1, seed=0, action_episodes=2)
    b = next(sampler)
    np.testing.assert_array_equal(b["action_mask"], b["episode"] < 2)
    assert b["action"].shape == (64, 1, 2) and b["action_mask"].any() and not b["action_mask"].all()
    # a share of every batch from the labelled episodes: the first round(0.25 * 8) = 2 clips, the rest as drawn
    shared = lam_data.ClipSampler(table, batch_size=8, clip_len=2, offset=1, seed=0, action_episodes=2,
                                  action_share=0.25)
    for _ in range(5):
        s = next(shared)
        assert s["action_mask"][:2].all() and set(s["episode"][:2]) <= {0, 1}
        np.testing.assert_array_equal(s["action_mask"], s["episode"] < 2)
    plain = next(lam_data.ClipSampler(table, batch_size=64, clip_len=2, offset=1, seed=0))
    assert "action" not in plain and "action_mask" not in plain  # off: the batches are what they were
    np.testing.assert_array_equal(plain["clip"], b["clip"])


def _cfg(weight: float = 0.5):
    c = lam_configs.get_config("lapa_tiny")
    c.data.cache_dir = ""
    c.model.action_head, c.loss.action_weight, c.data.action_episodes = 2, weight, 3
    return c


def test_the_config_refuses_what_cannot_work_and_the_fingerprint_follows_the_fields(demo_data) -> None:
    c = _cfg()
    c.model.action_head = 0
    with pytest.raises(ValueError, match=r"needs model\.action_head=2"):
        lam_config.check(c)
    c = _cfg()
    c.data.source = "pipeline"
    with pytest.raises(ValueError, match=r"needs data\.source='memory'"):
        lam_config.check(c)
    c = _cfg()
    c.data.root = demo_data
    on = lam_data.config_fingerprint(c)
    c.data.action_episodes = 4
    assert lam_data.config_fingerprint(c) != on  # another labelled set is other training data
    four = lam_data.config_fingerprint(c)
    c.data.action_share = 0.25
    assert lam_data.config_fingerprint(c) not in (on, four)  # so is another mix of them in the batches
    c.data.action_share = 1.5
    with pytest.raises(ValueError, match=r"action_share must be in \[0, 1\]"):
        lam_config.check(c)
    c.data.action_share = 0.0
    c.loss.action_weight = 0.0
    off = lam_data.config_fingerprint(c)
    legacy = lam_configs.get_config("lapa_tiny")  # a run saved before the fields
    legacy.data.cache_dir, legacy.data.root = "", demo_data
    for block, field in (("model", "action_head"), ("loss", "action_weight"), ("data", "action_episodes"),
                         ("data", "action_share")):
        del legacy[block][field]
    assert lam_data.config_fingerprint(legacy) == off  # unsupervised runs resume as before
    assert lam_config.from_saved(legacy.to_dict()).loss.action_weight == 0.0


def test_the_action_term_counts_labelled_clips_only_and_trains_the_head() -> None:
    cfg = _cfg()
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    assert "to_action" in variables["params"]
    plain = lam_configs.get_config("lapa_tiny")
    plain_vars = jax.jit(train.make_init_fn(plain))(jax.random.PRNGKey(0))
    assert "to_action" not in plain_vars["params"]  # off: the old parameter tree
    r = cfg.model.image_size
    rng = np.random.default_rng(0)
    batch = {"clip": rng.integers(0, 256, (4, 2, r, r, 3), dtype=np.uint8),
             "action": rng.normal(size=(4, 1, 2)).astype(np.float32),
             "action_mask": np.array([True, False, True, False])}
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    # jitted: an eager value_and_grad of the LAM dispatches every op on its own (minutes on 2 cores)
    grad_fn = jax.jit(jax.value_and_grad(train.make_loss_fn(cfg), has_aux=True))
    metrics = lambda b: grad_fn(params, b, jax.random.PRNGKey(1), state)[0][1][0]
    (_, (m, _)), grads = grad_fn(params, batch, jax.random.PRNGKey(1), state)
    # unlabelled clips' targets do not matter
    other = {**batch, "action": batch["action"].copy()}
    other["action"][[1, 3]] += 100.0
    assert math.isfinite(float(m["action"])) and float(metrics(other)["action"]) == pytest.approx(float(m["action"]))
    assert float(jnp.abs(grads["to_action"]["kernel"]).sum()) > 0
    # the term is the squared error of the head's prediction on the labelled clips, by hand
    model = train.make_model(cfg)
    rq = jax.random.split(jax.random.PRNGKey(1))[0]  # the loss's NSVQ key
    pred = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"nsvq": rq}, mutable=["nsvq"])[0]["action"])(
        variables, jnp.asarray(batch["clip"], jnp.float32) / 255.0)
    want = np.mean((np.asarray(pred) - batch["action"])[[0, 2]] ** 2)
    assert float(m["action"]) == pytest.approx(want, rel=1e-4)
    assert float(metrics({**batch, "action_mask": np.zeros(4, bool)})["action"]) == 0.0
    assert float(losses.action_loss(jnp.ones((1, 1, 2)), jnp.zeros((1, 1, 2)), jnp.ones((1, 1), bool))) == 1.0


def test_a_supervised_run_trains_probes_on_another_root_and_labels_as_before(demo_data, tmp_path,
                                                                             monkeypatch) -> None:
    from lam import evaluate as lam_eval
    from lam.label import Labeler, load_lam

    cfg = _cfg()
    cfg.data.root, cfg.data.batch_size, cfg.train.total_steps = demo_data, 8, 2
    cfg.eval.batches, cfg.eval.batch_size, cfg.eval.transfer_episodes, cfg.eval.transfer_steps = 1, 8, 1, 2
    res = train.train(cfg, str(tmp_path / "run"), overwrite=True)
    assert res.step == 2 and math.isfinite(res.metrics["action"])
    # probed on another root (here the same episodes under another name): its own directory, its root recorded
    other = tmp_path / "fresh"
    other.symlink_to(demo_data)
    m = lam_eval.evaluate(str(tmp_path / "run"), data_root=str(other))
    assert m["data_root"] == str(other) and (tmp_path / "run" / "eval_on_fresh" / "metrics.json").exists()
    assert 0.0 <= m["probe/direction_acc"] <= 1.0 and not (tmp_path / "run" / "eval").exists()
    with pytest.raises(FileNotFoundError, match=r"--data_root .*no such directory"):
        lam_eval.evaluate(str(tmp_path / "run"), data_root=str(tmp_path / "nowhere"))
    # a run whose entries pin their own root: --data_root would only redirect part of it, so it is refused
    pinned_cfg, pinned_vars = load_lam(str(tmp_path / "run"))
    pinned_cfg.data.datasets = (f"demo_robot@{demo_data}", "demo_human")
    with monkeypatch.context() as mp:
        mp.setattr(lam_eval, "load_lam", lambda *a, **k: (pinned_cfg, pinned_vars))
        with pytest.raises(ValueError, match=r"name their own root.*without '@root'"):
            lam_eval.evaluate(str(tmp_path / "run"), data_root=str(other))
    loaded, variables = load_lam(str(tmp_path / "run"))
    assert loaded.loss.action_weight == 0.5 and "to_action" in variables["params"]
    r = loaded.model.image_size
    ids = Labeler(loaded, variables)(np.zeros((1, 2, r, r, 3), np.uint8))  # the head plays no part in labelling
    assert ids.shape == (1, 1, loaded.model.code_grid**2)


def test_the_head_on_the_latent_reads_the_vectors_before_quantization() -> None:
    def runner(cfg):
        model = train.make_model(cfg)
        return jax.jit(lambda v, x, k: model.apply(v, x, train=True, rngs={"nsvq": k}, mutable=["nsvq"])[0])

    cfg = _cfg()
    cfg.model.action_from = "latent"
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    r = cfg.model.image_size
    clip = jnp.asarray(np.random.default_rng(0).random((2, 2, r, r, 3)), jnp.float32)
    run = runner(cfg)
    a, b = run(variables, clip, jax.random.PRNGKey(1)), run(variables, clip, jax.random.PRNGKey(2))
    # the prediction is the linear head of z itself: no quantization noise in it, by hand from the kernel
    head = variables["params"]["to_action"]
    want = a["z"].reshape(2, 1, -1) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(a["action"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["action"], b["action"], rtol=1e-5, atol=1e-6)
    cfg.model.action_from = "codes"  # the default: the (noisy, during training) quantized codes
    run = runner(cfg)
    a, b = run(variables, clip, jax.random.PRNGKey(1)), run(variables, clip, jax.random.PRNGKey(2))
    assert float(jnp.abs(a["action"] - b["action"]).max()) > 1e-4
    cfg.model.action_from = "pixels"
    with pytest.raises(ValueError, match=r"action_from must be 'codes' or 'latent'"):
        lam_config.check(cfg)


def test_the_oracle_agent_mask_weighs_the_pixels_near_the_effector_by_hand() -> None:
    # effector at pixel (x=1.5, y=1.5) then (x=5.5, y=1.5) on an 8 px frame, radius 1: pixel centres within 1 px
    eff = jnp.asarray([[[1.5, 1.5], [5.5, 1.5]]], jnp.float32)
    w = np.asarray(losses.agent_weights(eff, 8, 1.0, 3.0))
    assert w.shape == (1, 1, 8, 8)
    want = np.ones((8, 8), np.float32)
    for x, y in ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2), (5, 1), (4, 1), (6, 1), (5, 0), (5, 2)):
        want[y, x] = 4.0  # rows are y
    np.testing.assert_array_equal(w[0, 0], want)
    # the pixel and flow terms: weighted error, by hand on one pixel
    pred, target = jnp.zeros((1, 1, 8, 8, 3)), jnp.zeros((1, 1, 8, 8, 3)).at[0, 0, 1, 1].set(1.0)
    plain = float(losses.pixel_loss(pred, target, "l1"))
    assert float(losses.pixel_loss(pred, target, "l1", weight=jnp.asarray(w))) == pytest.approx(4 * plain)
    f = jnp.zeros((1, 1, 8, 8, 2)).at[0, 0, 7, 7].set(1.0)  # an error far from the effector keeps its weight
    assert float(losses.flow_loss(f, jnp.zeros_like(f), weight=jnp.asarray(w))) == pytest.approx(
        float(losses.flow_loss(f, jnp.zeros_like(f))))
    cfg = _cfg(0.0)
    cfg.loss.agent_weight = 2.0
    lam_config.check(cfg)
    cfg.data.source = "pipeline"
    with pytest.raises(ValueError, match=r"agent_weight > 0 needs data\.source='memory'"):
        lam_config.check(cfg)
    # a run trains with it (the effector reaches the step)
    cfg = _cfg(0.0)
    cfg.model.action_head = 0
    cfg.loss.agent_weight = 2.0
    variables = jax.jit(train.make_init_fn(cfg))(jax.random.PRNGKey(0))
    r = cfg.model.image_size
    rng = np.random.default_rng(0)
    batch = {"clip": rng.integers(0, 256, (2, 2, r, r, 3), dtype=np.uint8),
             "effector": rng.uniform(0, r, (2, 2, 2)).astype(np.float32)}
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    loss_fn = jax.jit(train.make_loss_fn(cfg))
    on = float(loss_fn(params, batch, jax.random.PRNGKey(1), state)[0])
    cfg.loss.agent_weight = 0.0
    off = float(jax.jit(train.make_loss_fn(cfg))(params, batch, jax.random.PRNGKey(1), state)[0])
    assert math.isfinite(on) and on > off
