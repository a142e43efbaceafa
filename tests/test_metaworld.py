"""Meta-World as a second world: RLDS datasets (features, determinism, action-free video, the shared readers),
the scripted experts, and closed-loop evaluation (bookkeeping, seeds, references, through the policy server)."""

import filecmp
import importlib.util
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before metaworld imports mujoco (MuJoCo reads it once, at import)
pytest.importorskip("metaworld")
import tensorflow  # noqa: F401  on purpose: rendering segfaults next to TF, so every render must use the worker
import tensorflow_datasets as tfds

from data import episodes, loader, windows
from data import mixture as mx
from data.metaworld import env as env_lib
from data.metaworld import tasks as tasks_lib
from data.metaworld import worker as worker_lib
from data.metaworld import writer
from policy import eval_report as er
from policy import evaluate as ev
from policy import metaworld_eval as mw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROBOT, VIDEO = ("reach-v3",), ("drawer-close-v3",)
SMALL = dict(episodes=2, val_episodes=1, resolution=32, robot_tasks=ROBOT, video_tasks=VIDEO, max_steps=20,
             num_shards=1)


@pytest.fixture(scope="module")
def mw_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("metaworld"))
    return root, writer.write_datasets(root, writer.GenerationConfig(**SMALL), progress=False)


def _flat_keys(features) -> set[str]:
    step = features["steps"].feature
    return set(step) | {f"observation/{k}" for k in step["observation"]}


def test_datasets_load_offline_with_declared_features(mw_data):
    root, summaries = mw_data
    assert [s["dataset"] for s in summaries] == ["metaworld_robot/1.0.0", "metaworld_video/1.0.0"]
    assert not [f for f in os.listdir(root) if f.startswith(".partial")]
    for kind, name in writer.DATASET_NAMES.items():
        builder = tfds.builder_from_directory(os.path.join(root, name, writer.VERSION))
        assert builder.info.features.to_json() == writer.features(32, with_actions=kind == "robot").to_json()
        assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "val": 1}
        keys = _flat_keys(builder.info.features)
        episode = next(iter(builder.as_dataset(split="train")))
        steps = list(episode["steps"].as_numpy_iterator())
        first, last = steps[0], steps[-1]
        assert first["is_first"] and last["is_last"] and len(steps) <= SMALL["max_steps"] + 1
        assert first["observation"]["image"].shape == (32, 32, 3) and first["observation"]["image"].std() > 5
        meta = episode["episode_metadata"]
        task = tasks_lib.get_task(meta["task"].numpy().decode())
        assert task.name in (ROBOT if kind == "robot" else VIDEO)
        assert first["language_instruction"].decode() in task.phrasings
        assert 0 <= int(meta["seed"]) < writer.DATA_SEED_LIMIT
        hand = np.stack([s["ground_truth"]["hand_pos"] for s in steps])
        motion = np.stack([s["ground_truth"]["hand_motion"] for s in steps])
        np.testing.assert_allclose(motion[:-1], hand[1:] - hand[:-1], atol=1e-6)
        assert np.abs(motion[:-1]).max() > 1e-3, "the expert moves the hand"
        pixel = np.stack([s["ground_truth"]["hand_pixel"] for s in steps])
        assert pixel.shape == (len(steps), 2) and ((pixel > 0) & (pixel < 32)).all(), "the hand is in view"
        assert np.abs(np.diff(pixel, axis=0)).max() > 0.01, "the hand moves in the image"
        if kind == "robot":
            assert {"action", "observation/state"} <= keys
            assert first["action"].shape == (4,) and first["observation"]["state"].shape == (4,)
            np.testing.assert_allclose(first["observation"]["state"][:3], hand[0], atol=1e-6)
            np.testing.assert_array_equal(last["action"], 0)
            assert bool(meta["success"]) == bool(last["is_terminal"])
        else:  # action-free video: no action, no proprio anywhere in the spec
            assert "action" not in keys and "observation/state" not in keys
            assert "action" not in first and "state" not in first["observation"]


def test_read_through_episode_reader_and_loader(mw_data, tmp_path):
    root, _ = mw_data
    robot = list(episodes.iter_episodes(episodes.EpisodeSource(root, "metaworld_robot"), resolution=32))
    assert len(robot) == 2
    for ep in robot:
        assert ep.frames.shape == (len(ep), 32, 32, 3) and ep.frame_valid.all()
        assert ep.action.shape == (len(ep), 7) and ep.action_valid[:-1].all() and not ep.action_valid[-1]
        np.testing.assert_array_equal(ep.action[:, 3:6], 0.0)
        assert ((ep.action[:-1, 6] >= 0) & (ep.action[:-1, 6] <= 1)).all()  # 1 = open, the registry's convention
        assert np.abs(ep.action[:-1, :3]).max() > 0 and ep.proprio[:, 4:].max() == 0
        assert ep.language in tasks_lib.TASKS[ROBOT[0]].phrasings
    video = list(episodes.iter_episodes(episodes.EpisodeSource(root, "metaworld_video", split="val"), resolution=32))
    assert len(video) == 1 and not video[0].action_valid.any() and video[0].frames.std() > 5
    mixture = mx.Mixture("mw", (mx.MixtureEntry("metaworld_robot", 1.0), mx.MixtureEntry("metaworld_video", 1.0)))
    cfg = mx.PipelineConfig(data_root=root, window=windows.vipra_window(), global_batch_size=8, resolution=32,
                            shuffle_buffer=64, stats_dir=str(tmp_path))
    it = loader.make_iterator(mixture, cfg, process_index=0, process_count=1)
    assert it.statistics["metaworld_video"]["num_action_transitions"] == 0
    b = next(it)
    assert b.history.shape[0] == 8 and b.history.shape[2:] == (32, 32, 3)
    video_rows = b.dataset_index == 1
    assert not b.action_valid[video_rows].any()
    assert b.history.std() > 1.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = dict(SMALL, datasets=("robot",), episodes=1, val_episodes=0, max_steps=8)
    dirs = []
    for sub, seed in (("a", 0), ("b", 0), ("c", 1)):
        writer.write_datasets(str(tmp_path / sub), writer.GenerationConfig(**cfg, seed=seed), progress=False)
        dirs.append(str(tmp_path / sub / "metaworld_robot" / writer.VERSION))
    shards = sorted(f for f in os.listdir(dirs[0]) if ".tfrecord" in f)
    assert shards
    same = [filecmp.cmp(os.path.join(dirs[0], f), os.path.join(dirs[1], f), shallow=False) for f in shards]
    other = [filecmp.cmp(os.path.join(dirs[0], f), os.path.join(dirs[2], f), shallow=False) for f in shards]
    assert all(same) and not all(other)


@pytest.mark.parametrize("task", ["reach-v3", "drawer-open-v3"])
def test_noisy_expert_solves_task(task):
    env = env_lib.MetaWorldEnv(task, images=False)
    expert = env_lib.ScriptedExpert(task)
    for seed in (11, 12):
        obs, _ = env.reset(seed)
        expert.reset(seed)
        while not (env.success or env.steps >= env.max_steps):
            obs, *_ = env.step(expert.act(obs["raw"]))
        assert env.success, f"{task} seed {seed}: expert failed in {env.steps} steps"
    env.close()


def test_seeded_reset_varies_the_task():
    env = env_lib.MetaWorldEnv("reach-v3", images=False)
    goals = [env.reset(s)[0]["raw"][36:39].copy() for s in (1, 2, 1)]
    assert np.abs(goals[0]).sum() > 0, "the goal is observable"
    np.testing.assert_array_equal(goals[0], goals[2])
    assert not np.allclose(goals[0], goals[1])
    env.close()


def _script_main():
    spec = importlib.util.spec_from_file_location("make_metaworld_data",
                                                  os.path.join(ROOT, "scripts", "make_metaworld_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("args, message", [
    (["--robot-tasks", "reach-v2"], "unknown Meta-World task 'reach-v2'; did you mean 'reach-v3'?"),
    (["--video-tasks", "reach-v3"], "robot and video tasks must be disjoint, both have reach-v3"),
    (["--resolution", "8"], "resolution must be in [16, 512] px, got 8"),
    (["--camera", "cornr"], "unknown camera 'cornr'; did you mean 'corner'?"),
])
def test_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert _script_main()(["--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_render_failure_names_mujoco_gl(monkeypatch):
    mujoco = env_lib._import_mujoco()

    def broken(*args, **kwargs):
        raise RuntimeError("Cannot initialize a EGL device display.\nmore detail")

    monkeypatch.setattr(mujoco, "Renderer", broken)
    monkeypatch.setattr(env_lib, "_check_no_tensorflow", lambda: None)  # the renderer is never made: safe with TF
    with pytest.raises(env_lib.RenderError) as err:
        env_lib.MetaWorldEnv("reach-v3", resolution=32)
    msg = str(err.value)
    assert "\n" not in msg and "MUJOCO_GL=" in msg and "EGL device" in msg


def test_worker_render_failure_is_one_line_naming_mujoco_gl():
    with worker_lib.Worker(mujoco_gl="no-such-backend") as w:
        with pytest.raises(env_lib.RenderError) as err:
            worker_lib.RemoteEnv(w, "reach-v3", resolution=32)
        assert w.call("cpu") > 0, "the worker keeps serving after an error"
    msg = str(err.value)
    assert "\n" not in msg and "MUJOCO_GL='no-such-backend'" in msg, msg


def test_projection_of_a_hand_made_camera():
    """Camera at z = 2 looking down -z with world axes (x right, y up in its image), fovy 90: focal = R / 2 px."""
    r = 32
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-0.5, -0.5, 1.0]])
    got = env_lib.project_points(pts, np.array([0, 0, 2.0]), np.eye(3), 90.0, r)
    # (x, y) = R/2 + R/2 * (cam_x, cam_y) / depth; the stored image is flipped, so camera-up is +y (down the rows)
    np.testing.assert_allclose(got, [[16, 16], [24, 16], [16, 24], [8, 8]], atol=1e-5)
    with pytest.raises(ValueError, match="behind the camera"):
        env_lib.project_points(np.array([[0, 0, 3.0]]), np.array([0, 0, 2.0]), np.eye(3), 90.0, r)


# run without TensorFlow (rendering needs it absent): the hand's rendered pixels (segmentation of the hand body and
# its fingers) against hand_pixel, in two tasks (corner2's pose comes from the live model, not the XML)
_SEGMENTATION_CHECK = """
import json, numpy as np, mujoco
from data.metaworld.env import MetaWorldEnv
out = []
for task in ("reach-v3", "drawer-close-v3"):
    env = MetaWorldEnv(task, 128); env.reset(3)
    m, d = env._env.model, env._env.data
    hand = m.body("hand").id
    def under_hand(b):
        while b:
            if b == hand: return True
            b = int(m.body_parentid[b])
        return False
    geoms = np.flatnonzero([under_hand(int(b)) for b in m.geom_bodyid])
    r = mujoco.Renderer(m, 128, 128); r.enable_segmentation_rendering()
    for k in range(4):
        for _ in range(15): env.step(np.array([1.0, -1.0, 0.5, 0.0]) * (1 if k < 2 else -1))
        r.update_scene(d, camera="corner2"); seg = r.render()[::-1]  # flipped like MetaWorldEnv.render
        ys, xs = np.nonzero((seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM) & np.isin(seg[..., 0], geoms))
        out.append([float(xs.mean() + 0.5), float(ys.mean() + 0.5), *map(float, env.hand_pixel), int(len(xs))])
print(json.dumps(out))
"""


def test_hand_pixel_lands_on_the_rendered_gripper():
    import json
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, "-c", _SEGMENTATION_CHECK], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = np.array(json.loads(run.stdout.strip().splitlines()[-1]))
    assert (rows[:, 4] >= 5).all(), "the gripper is visible in every frame"
    # the projected hand body origin vs the centroid of the hand's and fingers' pixels at 128 px (measured: <= 0.7 px)
    assert np.abs(rows[:, :2] - rows[:, 2:4]).max() < 1.5
    assert np.ptp(rows[:, 2:4], axis=0).max() > 3, "the hand moved across the image"


def test_in_process_rendering_is_refused_once_tensorflow_is_loaded():
    with pytest.raises(env_lib.RenderError, match=r"data\.metaworld\.worker"):
        env_lib.MetaWorldEnv("reach-v3", resolution=32)


def test_remote_env_matches_the_in_process_physics():
    """The proxy has MetaWorldEnv's interface: same raw observations, state and bookkeeping, plus real frames."""
    local = env_lib.MetaWorldEnv("reach-v3", images=False, max_steps=3)
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32)
    with worker_lib.Worker() as w:
        remote = worker_lib.RemoteEnv(w, "reach-v3", resolution=32, max_steps=3)
        assert remote.max_steps == 3 and remote.task.name == "reach-v3"
        for env in (local, remote):
            obs, info = env.reset(seed=5)
            assert info["task"] == "reach-v3"
            trace = [obs["raw"]]
            for a in actions:
                obs, _, terminated, truncated, _ = env.step(a)
                trace.append(obs["raw"])
            env.trace, env.last = np.stack(trace), (terminated, truncated, env.steps, env.seed)
        np.testing.assert_array_equal(remote.trace, local.trace)
        assert remote.last == local.last == (False, True, 3, 5)
        np.testing.assert_array_equal(remote.raw_obs, local.raw_obs)
        np.testing.assert_array_equal(remote.hand_pos, local.hand_pos)
        frame = remote.render()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.std() > 5
        with pytest.raises(ValueError, match="seed must be in"):
            remote.reset(seed=-1)
    local.close()


def test_worker_crash_is_reported_and_close_reaps_it():
    import signal

    w = worker_lib.Worker()
    assert w.cpu_seconds() > 0
    with pytest.raises(ValueError, match="unknown worker request"):
        w.call("no-such-op", 0)
    with pytest.raises(ValueError, match="no env 7 in the render worker"):
        w.call("reset", 7, 0)
    os.kill(w.proc.pid, signal.SIGSEGV)  # what a render next to TensorFlow did to the whole process
    with pytest.raises(worker_lib.WorkerError, match="died \\(signal SIGSEGV\\) during 'cpu'"):
        w.call("cpu")
    assert w.proc.returncode is not None
    with pytest.raises(worker_lib.WorkerError, match="was closed"):
        w.call("cpu")
    w2 = worker_lib.Worker()
    w2.close()
    assert w2.proc.returncode == 0, "closing our end (EOF) lets the worker exit by itself"


def test_worker_dies_with_its_parent():
    import subprocess
    import sys
    import time

    code = ("import os, sys; from data.metaworld.worker import Worker; w = Worker(); w.cpu_seconds(); "
            "print(w.proc.pid, flush=True); os._exit(0)")  # no atexit, no close: the parent just vanishes
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, 9)
    raise AssertionError(f"render worker {child} outlived its parent")


def test_eval_seeds_are_disjoint_from_generation():
    seeds = [mw.eval_seed(0, i) for i in range(5)]
    assert seeds == list(range(writer.EVAL_SEED_BASE, writer.EVAL_SEED_BASE + 5))
    gen = [writer.episode_seed(s, k, sp, i) for s in range(3) for k in writer.DATASET_NAMES
           for sp in ("train", "val") for i in range(50)]
    assert max(gen) < writer.DATA_SEED_LIMIT <= min(seeds)
    with pytest.raises(ValueError, match="disjoint from data generation"):
        mw.eval_seed(2**31, 0)
    with pytest.raises(ValueError, match="data-generation seed"):
        mw.MetaWorldSuite(mw.MetaWorldEvalConfig(tasks=ROBOT)).reset(gen[0])


def test_action_layout_round_trips():
    native = np.array([[0.5, -1.0, 0.25, 1.0], [0.0, 0.0, 0.0, -1.0]], np.float32)
    padded = mw.native_to_padded(native)
    np.testing.assert_array_equal(padded[:, 6], [0.0, 1.0])  # effort +1 closes -> 0 (closed); -1 -> 1 (open)
    np.testing.assert_array_equal(padded[:, 3:6], 0.0)
    np.testing.assert_allclose(mw.padded_to_native(padded), native)


def test_evaluation_bookkeeping_and_references(tmp_path):
    cfg = mw.MetaWorldEvalConfig(tasks=("reach-v3", "drawer-open-v3"), resolution=32)
    rnd = ev.evaluate(mw.RandomPolicy(image_size=32), episodes=4, world="metaworld", world_config=cfg, max_steps=6,
                      gif_dir=str(tmp_path), gif_episodes=1, progress=False)
    assert [r["family"] for r in rnd["records"]] == ["reach-v3", "drawer-open-v3"] * 2
    assert [r["seed"] for r in rnd["records"]] == [writer.EVAL_SEED_BASE + i for i in range(4)]
    assert all(r["steps"] == 6 and not r["success"] for r in rnd["records"])
    assert set(rnd["per_family"]) == set(cfg.tasks) and rnd["per_family"]["reach-v3"]["n"] == 2
    assert rnd["ci95"] == list(er.wilson_interval(0, 4)) and rnd["world"] == "metaworld"
    assert len(rnd["gifs"]) == 1 and os.path.getsize(rnd["gifs"][0]) > 0
    assert "reach-v3" in er.format_table([rnd])
    expert = ev.evaluate(mw.ExpertPolicy(image_size=32), episodes=2, world="metaworld",
                         world_config=mw.MetaWorldEvalConfig(tasks=("reach-v3",), resolution=32), progress=False)
    assert expert["successes"] == 2 and expert["per_family"]["reach-v3"]["ci95"] == list(er.wilson_interval(2, 2))


def test_evaluation_through_the_policy_server():
    """The same loop through policy/serve.py + policy/client.py gives the in-process figures exactly."""
    from fastapi.testclient import TestClient

    from policy.client import PolicyClient
    from policy.serve import create_app

    cfg = mw.MetaWorldEvalConfig(tasks=("reach-v3", "drawer-open-v3"), resolution=32)
    policy = mw.RandomPolicy(chunk=2, image_size=32)
    local = ev.evaluate(policy, episodes=2, world="metaworld", world_config=cfg, max_steps=5, progress=False)
    with TestClient(create_app(policy, warmup=False)) as http:
        remote = ev.evaluate(PolicyClient("http://testserver", http=http), episodes=2, world="metaworld",
                             world_config=cfg, max_steps=5, progress=False)
    keys = ("seed", "family", "success", "progress", "steps", "queries")
    assert [{k: r[k] for k in keys} for r in remote["records"]] == [{k: r[k] for k in keys} for r in local["records"]]
    assert remote["queries"] == local["queries"] == 6


def test_flow_check_scores_estimators_on_the_hand_track_without_recorded_flow(mw_data):
    """Meta-World records the hand's pixel track but no flow: lam.flow_check scores the track metrics only."""
    from configs import lam as lam_configs
    from lam import flow_check, flow_targets

    root, _ = mw_data
    cfg = lam_configs.get_config("lapa_metaworld")
    cfg.data.root, cfg.data.cache_dir, cfg.model.image_size, cfg.data.offset = root, "", 32, 8
    cfg.eval.min_motion = 0.25  # 32 px frames, 20-step episodes: the hand moves about 1 px over 8 steps
    res = flow_check.check(cfg, clips=32, seed=0, radius=3.0)
    assert set(res) == set(flow_targets.ESTIMATORS)
    for m in res.values():
        assert m["track_pairs"] > 0 and 0.0 <= m["track_dir"] <= 1.0 and "epe_moving" not in m
    assert "| block_match |" in flow_check.table(res) and "—" in flow_check.table(res)
