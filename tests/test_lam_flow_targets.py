"""Estimated flow targets (Farneback, block matching): agreement with the demo world's exact flow, and LAM training
on TFDS-written RLDS shards through the streaming pipeline with the estimated flow as supervision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from data.demo import render as render_lib
from data.demo import world as world_lib
from lam import flow_targets


def _moves(action: tuple[float, float], steps: int, seed: int = 0):
    env = world_lib.DemoWorld(world_lib.WorldConfig(resolution=64))
    env.reset(seed=seed)
    before = env.scene
    for _ in range(steps):
        env.step(np.asarray(action))
    after = env.scene
    return render_lib.render(before, 64)[0], render_lib.render(after, 64)[0], render_lib.flow(before, after, 64)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("action", [(0.03, 0.0), (0.0, -0.03), (-0.03, 0.03)])
def test_farneback_agrees_with_ground_truth_flow(action, steps) -> None:
    # up to ~3.5 px: a classical estimator loses the ~5 px effector once it moves farther than its own size
    a, b, gt = _moves(action, steps)
    est = flow_targets.farneback(a, b)
    assert est.shape == gt.shape == (64, 64, 2) and est.dtype == np.float32
    moving = np.linalg.norm(gt, axis=-1) > 1.0
    assert moving.sum() > 10, "the effector should have moved"
    g, e = gt[moving].mean(0), est[moving].mean(0)
    cos = float(g @ e / (np.linalg.norm(g) * np.linalg.norm(e) + 1e-9))
    assert cos > 0.95, (g, e)  # same direction
    assert 0.3 < np.linalg.norm(e) / np.linalg.norm(g) < 1.5, (g, e)  # roughly the same length (it smooths)
    far = ~moving & (np.abs(a.astype(int) - b.astype(int)).sum(-1) == 0)
    far[:4], far[-4:], far[:, :4], far[:, -4:] = False, False, False, False
    assert np.abs(est[far]).mean() < 0.3  # the static background stays still


def test_noise_gate_removes_a_pure_camera_shift() -> None:
    # a smooth random texture shifted 2 px right and 1 px down, nothing else moving: the raw flow is the shift
    # everywhere, the gated flow is zero nearly everywhere (only the wrapped border may differ)
    g = np.random.default_rng(0)
    tex = (np.kron(g.integers(40, 220, (16, 16, 3)), np.ones((4, 4, 1))) + g.normal(0, 2, (64, 64, 3)))
    a = np.clip(tex, 0, 255).astype(np.uint8)
    b = np.roll(a, (1, 2), axis=(0, 1))
    raw = flow_targets.farneback(a, b)
    gated = flow_targets.farneback(a, b, flow_targets.FarnebackParams(gate=12.0))
    inner = (slice(6, -6), slice(6, -6))
    assert np.abs(raw[inner].mean((0, 1)) - [2.0, 1.0]).max() < 0.3  # the raw estimate sees the shift
    assert (gated[inner] == 0).all(-1).mean() > 0.95 and np.abs(gated[inner]).mean() < 0.05


def test_noise_gate_finds_the_moving_objects_on_shaky_cluttered_video() -> None:
    # demo world with camera jitter and 3 drifting discs (issue #21 part 5): the moving mask (|flow| > 0.5 px after
    # the camera's motion is removed, as the flow loss reads it) overlaps the true one far better with the gate
    inter, union = {False: 0, True: 0}, {False: 0, True: 0}
    for seed in range(6):
        env = world_lib.DemoWorld(world_lib.WorldConfig(resolution=64, camera_jitter=1.0, num_distractors=3))
        env.reset(seed=seed)
        before = env.scene
        for _ in range(3):
            env.step(np.asarray([0.03, -0.02]))
        after = env.scene
        a, b = render_lib.render(before, 64)[0], render_lib.render(after, 64)[0]
        gt = render_lib.flow(before, after, 64)
        true_moving = np.linalg.norm(gt - np.median(gt, axis=(0, 1)), axis=-1) > 0.5
        for gate in (False, True):
            est = flow_targets.farneback(a, b, flow_targets.FarnebackParams(gate=12.0 if gate else 0.0))
            est = est if gate else est - np.median(est, axis=(0, 1))  # the loss's own camera compensation
            moving = np.linalg.norm(est, axis=-1) > 0.5
            inter[gate] += int((moving & true_moving).sum())
            union[gate] += int((moving | true_moving).sum())
    iou = {k: inter[k] / union[k] for k in inter}
    assert iou[True] > 2 * iou[False] and iou[True] > 0.15, iou  # measured 0.048 -> 0.219


def test_block_match_follows_the_effector_where_farneback_loses_it() -> None:
    # shaky cluttered demo video (1 px jitter, 3 discs), the effector pushed 3 steps (~4 px, about its own size) in a
    # random direction: the mean estimated flow over the truly moving pixels points the true way for block matching,
    # not for Farneback (measured mean cosine over 8 seeds: 0.774 against 0.232)
    cos = {"farneback": [], "block_match": []}
    for seed in range(8):
        env = world_lib.DemoWorld(world_lib.WorldConfig(resolution=64, camera_jitter=1.0, num_distractors=3))
        env.reset(seed=seed)
        before = env.scene
        act = np.random.default_rng(seed).uniform(-1, 1, 2)
        for _ in range(3):
            env.step(0.03 * act / np.linalg.norm(act))
        after = env.scene
        a, b = render_lib.render(before, 64)[0], render_lib.render(after, 64)[0]
        gt = render_lib.flow(before, after, 64)
        gt = gt - np.median(gt, axis=(0, 1))  # relative to the camera, as the loss reads it
        moving = np.linalg.norm(gt, axis=-1) > 0.5
        true = gt[moving].mean(0)
        for name in cos:
            est = flow_targets.ESTIMATORS[name][1](a, b)
            est = (est - np.median(est, axis=(0, 1)))[moving].mean(0)
            cos[name].append(float(true @ est / (np.linalg.norm(true) * np.linalg.norm(est) + 1e-9)))
    mean = {k: float(np.mean(v)) for k, v in cos.items()}
    assert mean["block_match"] > 0.6 and mean["block_match"] > mean["farneback"] + 0.3, mean


def test_block_match_recovers_integer_and_subpixel_shifts_and_checks_input() -> None:
    # the raw matcher (no registration, no forward-backward check, no gate): a textured square moved by (3, -2) px on
    # a flat background: found on the square's inside (within 0.1 px: the displacement penalty pulls the sub-pixel
    # step a little towards 0), zero on the flat background far from it, and a half-pixel shift of a smooth texture
    # found to 0.2 px
    raw = dict(gate=0.0, register=False, consistency=0.0)
    g = np.random.default_rng(1)
    a = np.full((48, 48, 3), 120, np.uint8)
    tex = g.integers(0, 255, (10, 10, 3), dtype=np.uint8)
    b = a.copy()
    a[15:25, 15:25], b[13:23, 18:28] = tex, tex
    f = flow_targets.block_match(a, b, flow_targets.BlockMatchParams(**raw))
    np.testing.assert_allclose(f[17:23, 17:23], np.broadcast_to([3.0, -2.0], (6, 6, 2)), atol=0.1)
    assert np.abs(f[35:, 35:]).max() == 0.0 and np.abs(f[:5, :5]).max() == 0.0
    yy, xx = np.mgrid[:48, :48].astype(np.float64)
    smooth = lambda dx: np.stack([127 + 100 * np.sin((xx - dx) / 3.0 + k) * np.cos(yy / 4.0) for k in range(3)], -1)
    half = flow_targets.block_match(smooth(0).astype(np.uint8), smooth(0.5).astype(np.uint8),
                                    flow_targets.BlockMatchParams(**raw, penalty=0.0))
    assert abs(float(np.median(half[10:-10, 10:-10, 0])) - 0.5) < 0.2
    with pytest.raises(ValueError, match="odd window"):
        flow_targets.block_match(a, b, flow_targets.BlockMatchParams(window=4))
    with pytest.raises(ValueError, match="two RGB frames"):
        flow_targets.block_match(a, b[:, :40])


def test_block_match_registers_the_camera_and_drops_matches_that_do_not_return() -> None:
    # a textured background shifted by the camera (1, -1) px and a textured square that moves (3, 2) px more: with
    # registration and the forward-backward check (the defaults, gate off to see the raw flow) the square's inside
    # reads (4, 1), the background (1, -1), and so does the background the square covers in b, which has no true
    # match (the raw matcher puts whatever fits best there); the check is what fixes that band
    g = np.random.default_rng(3)
    big = g.integers(0, 255, (60, 60, 3), dtype=np.uint8)
    big = np.asarray(ndimage.uniform_filter(big.astype(np.float32), size=(3, 3, 1)), np.uint8)  # matchable texture
    tex = big[40:50, 2:12][::-1].copy()
    a, b = big[6:54, 6:54].copy(), big[7:55, 5:53].copy()  # b(p) = scene(p + (-1, 1)): the camera moved (1, -1)
    a[15:25, 15:25], b[16:26, 19:29] = tex, tex  # the square: (15, 15) → (19, 16), i.e. (4, 1) in the image
    truth = np.broadcast_to(np.float32([1, -1]), (48, 48, 2)).copy()
    truth[15:25, 15:25] = (4, 1)
    covered = np.zeros((48, 48), bool)
    covered[16:26, 19:29] = True
    covered[15:25, 15:25] = False  # background of a under the square in b
    est = {k: flow_targets.block_match(a, b, flow_targets.BlockMatchParams(gate=0.0, consistency=c))
           for k, c in (("checked", 1.0), ("unchecked", 0.0))}
    err = {k: np.linalg.norm(f - truth, axis=-1) for k, f in est.items()}
    inside = est["checked"][17:23, 17:23].reshape(-1, 2)  # (the sub-pixel registration blurs: 0.25 px at worst)
    np.testing.assert_allclose(np.median(inside, 0), [4.0, 1.0], atol=0.1)
    np.testing.assert_allclose(inside, np.broadcast_to([4.0, 1.0], inside.shape), atol=0.25)
    assert np.median(err["checked"][35:, 35:]) < 0.15  # the background far from the square
    assert np.median(err["checked"][covered]) < 0.25 < np.median(err["unchecked"][covered]), (
        np.median(err["checked"][covered]), np.median(err["unchecked"][covered]))
    # a raw-noise square outweighs the smooth background and phase correlation finds a shift far outside the search
    # range (32, 12 px here): then the frames are matched unregistered rather than misaligned
    a[15:25, 15:25], b[16:26, 19:29] = (g.integers(0, 255, (10, 10, 3), dtype=np.uint8),) * 2
    assert np.abs(flow_targets.camera_shift(flow_targets._gray(a), flow_targets._gray(b))).max() > 6
    same = lambda reg: flow_targets.block_match(a, b, flow_targets.BlockMatchParams(gate=0.0, register=reg))
    np.testing.assert_array_equal(same(True), same(False))
    # ... and the noise gate registers by that same (zero) shift rather than finding the far one again
    ga, gb = flow_targets._gray(a), flow_targets._gray(b)
    gated = flow_targets.block_match(a, b, flow_targets.BlockMatchParams(gate=8.0))
    np.testing.assert_array_equal(gated, flow_targets.noise_gate(same(False), ga, gb, 8.0, np.zeros(2, np.float32)))


def test_estimator_reads_its_settings_from_the_loss_block() -> None:
    from configs import lam as lam_configs

    loss = lam_configs.get_config("lapa_demo").loss
    loss.flow_target, loss.block_match_gate, loss.block_match_radius = "block_match", 0.0, 2
    a, b, _ = _moves((0.03, 0.0), 3)  # the effector moves ~4 px: beyond a 2 px search, the raw match stops at 2
    f = flow_targets.estimator(loss)(a, b)
    assert np.abs(f).max() <= 2.5 and np.abs(f).max() >= 1.5
    loss.flow_target = "ground_truth"
    with pytest.raises(ValueError, match="not an estimator"):
        flow_targets.estimator(loss)


def test_a_block_match_run_saved_before_registration_keeps_the_plain_matcher() -> None:
    # a run's config.json from before block_match_register / block_match_consistency existed: loaded for resume or
    # evaluation, its estimator is the plain matcher it trained with, not today's default
    import json

    from configs import lam as lam_configs
    from lam import config as lam_config

    saved = json.loads(lam_configs.get_config("lapa_cluttered").to_json_best_effort())
    saved["loss"]["flow_target"] = "block_match"
    del saved["loss"]["block_match_register"], saved["loss"]["block_match_consistency"]
    loss = lam_config.from_saved(saved).loss
    assert loss.block_match_register is False and loss.block_match_consistency == 0.0
    a, b, _ = _moves((0.03, 0.0), 3)
    plain = flow_targets.BlockMatchParams(register=False, consistency=0.0)
    np.testing.assert_array_equal(flow_targets.estimator(loss)(a, b), flow_targets.block_match(a, b, plain))
    assert lam_configs.get_config("lapa_cluttered").loss.block_match_register is True  # today's default


def test_clip_flow_masks_invalid_frames_and_checks_input() -> None:
    a, b, _ = _moves((0.03, 0.0), 1)
    clip = np.stack([np.stack([a, b, b])] * 2)  # [2, 3, 64, 64, 3]
    valid = np.array([[True, True, True], [True, True, False]])
    f = flow_targets.clip_flow(clip, valid)
    assert f.shape == (2, 2, 64, 64, 2)
    assert np.abs(f[1, 1]).max() == 0.0 and np.abs(f[0, 0]).max() > 1.0
    np.testing.assert_allclose(f[0, 0], f[1, 0])
    with pytest.raises(ValueError, match="uint8"):
        flow_targets.clip_flow(clip.astype(np.float32))


@pytest.mark.parametrize("target", ["farneback", "block_match"])
def test_lam_trains_on_rlds_pipeline_with_estimated_flow(demo_data, tmp_path, target) -> None:
    from configs import lam as lam_configs
    from lam import train as lam_train

    # the session's shared demo RLDS shards (conftest.py; read-only: cache_dir "" writes nothing next to them)
    cfg = lam_configs.get_config("lapa_tiny")
    cfg.data.source, cfg.data.root, cfg.data.cache_dir, cfg.data.shuffle_buffer = "pipeline", demo_data, "", 64
    cfg.data.batch_size = 8
    cfg.loss.flow_weight = 1.0
    with pytest.raises(ValueError, match="farneback"):
        lam_train.make_data(cfg)  # no ground-truth flow in the streaming pipeline
    cfg.loss.flow_target = target
    it = lam_train.make_data(cfg)
    batch = next(it)
    assert batch["flow"].shape == (8, 1, 64, 64, 2) and np.abs(batch["flow"]).max() > 0.5
    state = it.get_state()
    again = lam_train.make_data(cfg)
    again.set_state(state)
    np.testing.assert_array_equal(next(it)["flow"], next(again)["flow"])  # resumable: the state passes through
    cfg.train.total_steps = 3
    res = lam_train.train(cfg, str(tmp_path / "run"), overwrite=True)
    assert res.step == 3 and math.isfinite(res.metrics["flow"]) and math.isfinite(res.metrics["loss"])


def test_flow_check_scores_the_truth_perfectly_and_runs_on_demo_shards(demo_data) -> None:
    from configs import lam as lam_configs
    from lam import flow_check

    g = np.random.default_rng(0)
    truth = np.zeros((4, 16, 16, 2), np.float32)
    truth[:, 6:10, 6:10] = g.normal(0, 3, (4, 1, 1, 2))  # a 4 px mover per pair, moving the same way throughout
    effector = np.full((4, 2), 8.0, np.float32)
    perfect = flow_check.compare(truth, truth, effector)
    assert perfect["epe_moving"] == perfect["epe_static"] == 0.0 and perfect["iou"] == 1.0
    assert perfect["effector_dir"] == 1.0 and perfect["effector_speed"] == pytest.approx(1.0)
    assert flow_check.compare(-truth, truth, effector)["effector_dir"] == 0.0  # the opposite way: no sector agrees
    disp = truth[:, 8, 8]  # the mover's true displacement; a 2 px disc lies inside it, so its mean is that displacement
    track = flow_check.compare_track(truth, disp, effector, radius=2.0)
    assert track["track_dir"] == 1.0 and track["track_speed"] == pytest.approx(1.0)
    assert flow_check.compare_track(-truth, disp, effector, radius=2.0)["track_dir"] == 0.0
    slow = disp.copy()
    slow[0] = 0.3  # under the 1 px floor: not scored
    assert flow_check.compare_track(truth, slow, effector, radius=2.0)["track_pairs"] == 3
    cfg = lam_configs.get_config("lapa_demo")
    cfg.data.root, cfg.data.cache_dir = demo_data, ""
    res = flow_check.check(cfg, clips=16, seed=0)
    assert set(res) == set(flow_targets.ESTIMATORS)
    for m in res.values():
        assert m["pairs_with_effector"] > 0 and 0.0 <= m["effector_dir"] <= 1.0 and m["ms_per_pair"] > 0
        assert m["track_pairs"] > 0 and 0.0 <= m["track_dir"] <= 1.0
    assert "| block_match |" in flow_check.table(res)
