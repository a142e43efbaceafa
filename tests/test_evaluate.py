"""Closed-loop evaluation harness (policy/evaluate.py) on the demo world: statistics, history clamping, action
conversion, the expert/random baselines, determinism, rollout files, reporting helpers and the CLI."""

import json
import os

import numpy as np
import pytest

from core.errors import UserError
from data.demo.world import DemoWorld, WorldConfig
from policy import eval_report as er
from policy import evaluate as ev


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


class SpyPolicy:
    """Records what it is given; moves right with a fixed chunk."""

    def __init__(self, offsets=(-2, 0), chunk=1, stride=None):
        self.offsets, self.chunk, self.stride = offsets, chunk, stride
        self.calls, self.resets = [], 0

    def metadata(self):
        m = {"image_size": 64, "history_offsets": list(self.offsets), "action_dim": 7, "chunk": self.chunk}
        if self.stride:
            m["frame_stride"] = self.stride
        return m

    def reset(self):
        self.resets += 1

    def act(self, images, instruction, *, seed=0):
        self.calls.append((images.copy(), instruction, seed))
        return self.actions()

    def actions(self):
        a = np.tile(np.array([0.02, 0.01, 0, 0, 0, 0, 1], np.float32), (self.chunk, 1))
        a[:, 0] += 0.001 * np.arange(self.chunk)  # distinguishable actions within a chunk
        return a


def test_wilson_known_values():
    lo, hi = er.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-4)
    lo, hi = er.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-4), pytest.approx(0.76341, abs=1e-4))
    lo, hi = er.wilson_interval(10, 10)
    assert lo == pytest.approx(0.72246, abs=1e-4) and hi == 1.0
    lo, hi = er.wilson_interval(198, 200)
    assert (lo, hi) == (pytest.approx(0.96425, abs=1e-4), pytest.approx(0.99725, abs=1e-4))
    assert er.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        er.wilson_interval(3, 2)


def test_action_conversion_round_trip():
    rng = np.random.default_rng(0)
    native = rng.uniform(-0.03, 0.03, (5, 2)).astype(np.float32)
    padded = ev.native_to_padded(native)
    assert padded.shape == (5, 7)
    np.testing.assert_array_equal(padded[:, 2:], np.tile([0, 0, 0, 0, 1], (5, 1)))
    np.testing.assert_array_equal(ev.padded_to_native(padded), native)
    np.testing.assert_array_equal(ev.padded_to_native(native), native)  # native 2-D passes through
    with pytest.raises(ValueError):
        ev.padded_to_native(np.zeros((2, 5)))


def test_padding_matches_registry():
    """The harness's inverse must undo exactly what data/oxe.py does to demo_robot actions."""
    pytest.importorskip("tensorflow")
    from data import oxe

    tf = oxe.tf
    native = np.array([[0.01, -0.02], [0.03, 0.0], [0.0, 0.0]], np.float32)

    class Stub:
        def length(self):
            return tf.constant(3)

        def get(self, path):
            return {"steps/action": tf.constant(native), "steps/observation/state": tf.zeros([3, 2]),
                    "steps/language_instruction": tf.constant(["push"] * 3),
                    "steps/observation/image": tf.constant([b""] * 3)}[path]

    spec = oxe.get_spec("demo_robot")
    assert oxe.ACTION_DIM == ev.ACTION_DIM
    out = spec.layouts[0].standardize(Stub())["action"].numpy()
    np.testing.assert_array_equal(out, ev.native_to_padded(native))
    np.testing.assert_array_equal(ev.padded_to_native(out), native)


def test_history_indices_clamp_like_windows():
    assert ev.history_indices(0, (-2, 0)) == [0, 0]
    assert ev.history_indices(1, (-2, 0)) == [0, 1]
    assert ev.history_indices(5, (-2, 0)) == [3, 5]
    assert ev.history_indices(3, (-1, 0), stride=2) == [1, 3]


def test_history_frames_and_chunk_execution():
    spy = SpyPolicy(offsets=(-2, 0), chunk=3)
    res = ev.evaluate(spy, episodes=1, seed=7, max_steps=7, execute_steps=2, progress=False)
    # replay the executed actions to get the frames independently
    env = DemoWorld(WorldConfig(resolution=64, max_steps=7))
    obs, info = env.reset(seed=7)
    frames = [obs["image"]]
    for _ in range(len(spy.calls)):
        for j in range(2):
            if len(frames) - 1 >= 7:
                break
            obs, *_ = env.step(ev.padded_to_native(spy.actions()[j]))
            frames.append(obs["image"])
    assert spy.resets == 1 and res["records"][0]["steps"] == 7
    assert len(spy.calls) == 4 == res["queries"]  # 7 steps, 2 actions per query
    for q, (images, instruction, _) in enumerate(spy.calls):
        t = 2 * q
        assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
        assert instruction == info["instruction"]
        np.testing.assert_array_equal(images[0], frames[max(t - 2, 0)])
        np.testing.assert_array_equal(images[1], frames[t])
    first = spy.calls[0][0]
    np.testing.assert_array_equal(first[0], first[1])  # t = 0: [first, first]
    assert len({s for _, _, s in spy.calls}) == len(spy.calls)  # a fresh seed per query


def test_expert_and_random_baselines():
    expert = ev.evaluate(ev.ExpertPolicy(), episodes=10, seed=0, progress=False)
    assert expert["success_rate"] >= 0.8, expert["success_rate"]
    rnd = ev.evaluate(ev.RandomPolicy(chunk=4), episodes=10, seed=0, max_steps=60, progress=False)
    assert rnd["success_rate"] <= 0.3, rnd["success_rate"]
    for r in (expert, rnd):
        lo, hi = r["ci95"]
        assert lo <= r["success_rate"] <= hi
        assert sum(f["n"] for f in r["per_family"].values()) == 10
        assert r["queries_per_second"] > 0 and r["seconds_per_episode"] > 0
        json.dumps(r)  # serializable
    assert rnd["mean_episode_length"] <= 60 and rnd["settings"]["execute_steps"] == 4


def test_progress_interval_is_the_comparison_reports():
    """One evaluation's progress interval is the one the comparison report prints for that run: before, evaluate
    seeded the bootstrap with the first world seed and the report with 0, so `make demo` printed [0.013, 0.182] on
    a stage line and [0.012, 0.182] in the report for the same 30 episodes."""
    from policy import compare_report as cr

    res = ev.evaluate(ev.ExpertPolicy(), episodes=8, seed=40, max_steps=12, progress=False)  # partial progress
    assert len({r["progress"] for r in res["records"]}) > 2  # a spread, so two bootstrap streams would differ
    run = cr.Run.from_result(res, recipe="expert", variant="", demos=1, seed=0)
    assert cr.pooled([run])["progress_ci95"] == res["progress_ci95"]
    fam, per = next(iter(res["per_family"].items()))
    assert cr.pooled([run], fam)["progress_ci95"] == per["progress_ci95"]


def test_deterministic_per_seed():
    a = ev.evaluate(ev.ExpertPolicy(), episodes=3, seed=11, progress=False)
    b = ev.evaluate(ev.ExpertPolicy(), episodes=3, seed=11, progress=False)
    assert _strip(a["records"]) == _strip(b["records"])
    r1 = ev.evaluate(ev.RandomPolicy(), episodes=2, seed=5, max_steps=20, progress=False)
    r2 = ev.evaluate(ev.RandomPolicy(), episodes=2, seed=5, max_steps=20, progress=False)
    assert _strip(r1["records"]) == _strip(r2["records"])
    assert [r["seed"] for r in a["records"]] == [11, 12, 13]


@pytest.mark.parametrize("fmt", ["gif", "png"])
def test_rollout_files(tmp_path, fmt):
    res = ev.evaluate(ev.RandomPolicy(chunk=2), episodes=3, seed=0, max_steps=8, gif_dir=str(tmp_path),
                      gif_episodes=2, gif_format=fmt, progress=False)
    assert len(res["gifs"]) == 2
    for path, rec in zip(res["gifs"], res["records"][:2], strict=True):
        name = os.path.basename(path)
        assert name.endswith("." + fmt) and os.path.dirname(path) == str(tmp_path)
        assert ("success" if rec["success"] else "failure") in name
        assert ev._slug(rec["instruction"]) in name
    with open(res["gifs"][0], "rb") as f:
        head = f.read(8)
    assert head[:6] in (b"GIF89a", b"GIF87a") if fmt == "gif" else head == b"\x89PNG\r\n\x1a\n"
    Image = pytest.importorskip("PIL.Image")
    with Image.open(res["gifs"][0]) as im:
        assert im.size[1] == 128  # 64 px upscaled
        if fmt == "gif":
            assert im.n_frames == res["records"][0]["steps"] + 1


class FirstEpisodeIdle(ev.ExpertPolicy):
    """Stands still in its first episode (a failure), then is the scripted expert."""

    def __init__(self):
        super().__init__()
        self.episodes = 0

    def reset(self) -> None:
        super().reset()
        self.episodes += 1

    def act(self, images, instruction, *, seed=0):
        out = super().act(images, instruction, seed=seed)
        return np.zeros_like(out) if self.episodes == 1 else out


def test_rollouts_show_a_success_and_a_failure(tmp_path):
    """gif_episodes=1: episode 0 (a failure) is written, then the first later success too, and nothing more."""
    res = ev.evaluate(FirstEpisodeIdle(), episodes=4, seed=0, max_steps=60, gif_dir=str(tmp_path), gif_episodes=1,
                      progress=False)
    outcomes = [r["success"] for r in res["records"]]
    assert outcomes[0] is False and True in outcomes[1:], outcomes
    first_success = outcomes.index(True)
    assert len(res["gifs"]) == 2
    assert os.path.basename(res["gifs"][0]).startswith("000_") and "_failure_" in res["gifs"][0]
    assert os.path.basename(res["gifs"][1]).startswith(f"{first_success:03d}_") and "_success_" in res["gifs"][1]


def test_table_and_plot(tmp_path):
    def fake(name, recipe, demos, k, n):
        return {"name": name, "recipe": recipe, "demos": demos, "episodes": n, "successes": k,
                "success_rate": k / n, "ci95": list(er.wilson_interval(k, n)),
                "per_family": {"separate": {"rate": k / n, "ci95": [0, 1], "n": n, "successes": k}}}

    results = [fake("vipra-50", "vipra", 50, 20, 50), fake("vipra-200", "vipra", 200, 40, 50),
               fake("scratch-50", "scratch", 50, 5, 50)]
    table = er.format_table(results)
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("| name | demos | success % | 95% CI | progress % [95% CI] | separate")
    assert "| vipra-50 | 50 | 40.0 (20/50) |" in lines[2]
    path = er.plot_success_vs_demos(results, str(tmp_path / "plot.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_baseline(tmp_path, capsys):
    out = tmp_path / "res.json"
    ev.main(["--policy", "random", "--episodes", "2", "--max-steps", "10", "--no-progress", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["episodes"] == 2 and res["name"] == "random"
    assert "| random |" in capsys.readouterr().out
    with pytest.raises(UserError, match="--bin-temperature applies to an action-bin checkpoint"):
        ev.main(["--policy", "random", "--episodes", "1", "--bin-temperature", "1"])


def test_cli_refuses_bad_tasks_and_an_absent_server_before_any_work(tmp_path):
    """An unknown Meta-World task was found only after the checkpoint had loaded, and as a ValueError traceback; a
    --server where nothing listens was an httpx traceback."""
    import socket

    with pytest.raises(UserError, match="unknown Meta-World task 'reach-v9'; did you mean 'reach-v3'"):
        ev.main(["--checkpoint", str(tmp_path / "not_loaded"), "--world", "metaworld", "--tasks", "reach-v9"])
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError, match=f"no policy server answers at http://127.0.0.1:{port} .*policy.serve"):
        ev.main(["--server", f"http://127.0.0.1:{port}", "--episodes", "1"])


def test_world_config_from_dataset(tmp_path):
    d = tmp_path / "demo_robot" / "1.0.0"
    d.mkdir(parents=True)
    (d / "generation.json").write_text(json.dumps({
        "episodes": 5, "val_episodes": 1, "resolution": 128, "seed": 0, "tasks": ["separate"],
        "embodiments": ["robot", "human"], "max_steps": 90, "camera_jitter": 0.5, "num_distractors": 1,
        "num_shards": 1, "embodiment": "robot", "fps": 10, "summary": {}}))
    cfg = ev.world_config_from_dataset(str(tmp_path))
    assert cfg == WorldConfig(resolution=128, embodiment="robot", tasks=("separate",), max_steps=90,
                              camera_jitter=0.5, num_distractors=1)
    assert ev.default_world_config() == WorldConfig(resolution=64, embodiment="robot", max_steps=120)
