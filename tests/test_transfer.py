"""The Meta-World transfer experiment (issue #24 part 3): `scripts/demo.py --world metaworld` and
`scripts/compare.py --world metaworld`. What each stage reads (pretraining: only the source tasks' action-free video;
fine-tuning and evaluation: only the target tasks), the seed bookkeeping (evaluation world seeds vs the recomputed
generation seeds), the world's budgets, and (slow tier) the whole pipeline end to end with `--smoke`."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _stages  # noqa: E402
import _worlds  # noqa: E402
import compare  # noqa: E402  (scripts/compare.py)
import demo  # noqa: E402  (scripts/demo.py)

from core.errors import UserError  # noqa: E402
from data.metaworld import tasks as mw_tasks  # noqa: E402

ROBOT, VIDEO = ("reach-v3", "push-v3"), ("drawer-close-v3",)


@pytest.fixture(autouse=True)
def _fresh_stages(monkeypatch):
    monkeypatch.setattr(_stages, "STAGES", [])


def _pipeline(monkeypatch, tmp_path, argv) -> tuple[dict[str, list[str]], list[str]]:
    """demo.main with every stage recorded instead of run: ({stage: command}, compare.main's argv)."""
    stages, calls = {}, []
    monkeypatch.setattr(demo, "run_stage", lambda name, cmd, *a, **k: stages.setdefault(name, cmd) and False)
    monkeypatch.setattr(demo, "generate_data", lambda *a, **k: stages.setdefault("data", ["in-process"]))
    monkeypatch.setattr(compare, "main", lambda argv: calls.append(argv) or 0)
    assert demo.main(["--out", str(tmp_path), *argv]) == 0
    return stages, calls[0]


def _flag(cmd: list[str], name: str) -> str | None:
    """The value of `name=V` or `name V` in a command, None when absent."""
    for i, c in enumerate(cmd):
        if c.startswith(name + "="):
            return c.split("=", 1)[1]
        if c == name:
            return cmd[i + 1]
    return None


def test_pretraining_reads_only_source_video_and_the_budget_sets_the_sizes(monkeypatch, tmp_path):
    stages, argv = _pipeline(monkeypatch, tmp_path, ["--world", "metaworld"])
    b = _worlds.WORLDS["metaworld"].budgets["cpu"]
    assert list(stages) == ["data", "vqgan", "lam_lapa", "lam_lapa_eval", "lam_vipra", "lam_vipra_eval", "vla_lapa",
                            "vla_vipra"]
    data = stages["data"]
    assert data[1] == "scripts/make_metaworld_data.py" and _flag(data, "--episodes") == str(b.episodes)
    assert _flag(data, "--out") == str(tmp_path / "data") and _flag(data, "--seed") == "0"
    assert _flag(stages["vqgan"], "--config.data.datasets") == "('metaworld_video',)"
    assert _flag(stages["vqgan"], "--config.train.total_steps") == str(b.vqgan_steps)
    for name in ("lam_lapa", "lam_vipra", "vla_lapa", "vla_vipra"):
        cmd = stages[name]
        assert _flag(cmd, "--config.data.datasets") == "('metaworld_video',)", name
        assert _flag(cmd, "--config.data.weights") == "(1.0,)", name
        steps = b.lam_steps if name.startswith("lam") else b.vla_steps
        assert _flag(cmd, "--config.train.total_steps") == (str(steps) if steps else None), name  # 0: the preset's
    for fam in ("lapa", "vipra"):  # the Meta-World presets: Farneback targets (no ground-truth flow), offset 10
        assert _flag(stages[f"lam_{fam}"], "--config") == f"configs/lam.py:{fam}_metaworld"
    for name in ("vla_lapa", "vla_vipra"):  # the tokenizer covers the Meta-World instructions
        assert _flag(stages[name], "--config.text.corpus") == "metaworld"
    # nothing upstream of fine-tuning reads the target tasks' dataset
    assert not any("metaworld_robot" in c for cmd in stages.values() for c in cmd)
    assert _flag(argv, "--world") == "metaworld" and _flag(argv, "--preset") == b.compare_preset
    assert _flag(argv, "--steps") == str(b.finetune_steps) and _flag(argv, "--data-root") == str(tmp_path / "data")

    gpu, _ = _pipeline(monkeypatch, tmp_path / "gpu", ["--world", "metaworld", "--budget", "gpu"])
    g = _worlds.WORLDS["metaworld"].budgets["gpu"]
    assert _flag(gpu["lam_lapa"], "--config.train.total_steps") == str(g.lam_steps)
    assert _flag(gpu["data"], "--episodes") == str(g.episodes) != str(b.episodes)
    with pytest.raises(UserError, match="--budget 'tpu': the metaworld world has cpu, gpu"):  # exit 2, one line
        demo.main(["--out", str(tmp_path), "--world", "metaworld", "--budget", "tpu"])


def test_the_demo_world_commands_are_unchanged(monkeypatch, tmp_path):
    """`make demo` keeps its presets' own datasets (demo_robot + demo_human) and sizes: no world overrides."""
    stages, argv = _pipeline(monkeypatch, tmp_path, [])
    assert stages["data"] == ["in-process"]
    assert not any(c.startswith(("--config.data.datasets", "--config.text.corpus", "--config.loss.flow_target"))
                   for cmd in stages.values() for c in cmd)
    assert _flag(stages["vqgan"], "--config.train.total_steps") == "800"
    assert _flag(stages["lam_lapa"], "--config.train.total_steps") is None  # the preset's 3500
    assert _flag(argv, "--preset") == "demo" and _flag(argv, "--steps") is None


@pytest.fixture(scope="module")
def mw_root(tmp_path_factory) -> str:
    """A tiny pair of Meta-World datasets (2 target tasks with actions, 1 source task as video)."""
    pytest.importorskip("metaworld")
    from data.metaworld import writer

    root = str(tmp_path_factory.mktemp("mwxfer"))
    cfg = writer.GenerationConfig(episodes=4, val_episodes=1, resolution=32, robot_tasks=ROBOT, video_tasks=VIDEO,
                                  max_steps=10, num_shards=1)
    writer.write_datasets(root, cfg, progress=False)
    return root


def _args(tmp_path: Path, root: str, **kw):
    import argparse

    a = {"out": str(tmp_path / "cmp"), "data_root": root, "recipes": ["scratch", "lapa", "vipra"], "demos": [2, 4],
         "seeds": [0, 1], "episodes": 6, "eval_seed": 0, "steps": 7, "ref_steps": 0, "finetune_arg": [],
         "gif_episodes": 0, "world": "metaworld"}
    return argparse.Namespace(**{**a, **kw})


def test_fine_tuning_and_evaluation_use_only_the_target_tasks(mw_root, tmp_path):
    jobs = compare.plan(_args(tmp_path, mw_root), {"": ["vla"]})
    assert len(jobs) == 2 * 2 * 3 and [j.seed for j in jobs] == [0] * 6 + [1] * 6  # seed-major
    for j in jobs:
        assert _flag(j.train, "--config.data.datasets") == "('metaworld_robot',)", j.name
        assert _flag(j.train, "--config.policy.num_demos") == str(j.demos)
        assert _flag(j.train, "--config.train.seed") == str(j.seed)
        assert _flag(j.evaluate, "--world") == "metaworld" and _flag(j.evaluate, "--data") is None
        tasks = _flag(j.evaluate, "--tasks").split(",")
        assert tasks == list(ROBOT) and not set(tasks) & set(VIDEO)  # exactly the tasks the demos show
        assert _flag(j.evaluate, "--seed") == "0" and _flag(j.evaluate, "--episodes") == "6"
        if j.recipe == "scratch":
            assert _flag(j.train, "--config.policy.tokenizers_from") == "vla/vipra"
        else:
            assert _flag(j.train, "--config.policy.pretrained") == f"vla/{j.recipe}"
    # the pipeline's own target/source split is disjoint too
    assert not set(mw_tasks.ROBOT_TASKS) & set(mw_tasks.VIDEO_TASKS)


def test_metaworld_seed_bookkeeping(mw_root, tmp_path):
    from data.metaworld.writer import EVAL_SEED_BASE
    from data.tf_setup import tfds

    world = _worlds.get_world("metaworld")
    stored = {}
    for name in ("metaworld_robot", "metaworld_video"):
        b = tfds.builder_from_directory(os.path.join(mw_root, name, "1.0.0"))
        for split in ("train", "val"):
            for i, ep in enumerate(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False))):
                stored[int(ep["episode_metadata"]["seed"])] = f"{name} {split} episode {i}"
    assert world.data_seeds(mw_root) == stored and len(stored) == 10  # recomputed = what the datasets hold
    assert compare.check_eval_seeds([mw_root], 0, 6, "metaworld") == 10
    # episode i plays world seed 2^31 + eval_seed + i: a test.json is complete only with exactly those
    ok = compare.evaluated(3, 5, "metaworld")
    test = tmp_path / "test.json"
    recs = [{"seed": EVAL_SEED_BASE + 5 + i} for i in range(3)]
    test.write_text(json.dumps({"episodes": 3, "settings": {"seed": 5}, "records": recs}))
    assert ok(str(test))
    test.write_text(json.dumps({"episodes": 3, "settings": {"seed": 5}, "records": [{"seed": 5 + i} for i in
                                                                                   range(3)]}))
    assert not ok(str(test))  # the demo world's seeds for the same --eval-seed
    # a world whose evaluation seeds were generation seeds is refused in one line naming the episode
    clash = next(iter(stored))
    demo_like = _worlds.PipelineWorld(**{**world.__dict__, "eval_world_seed": lambda s, i: s + i})
    _worlds.WORLDS["clash"] = demo_like
    try:
        with pytest.raises(UserError, match=rf"include 1 data-generation seed\(s\), e\.g\. {clash} \(metaworld_"):
            compare.check_eval_seeds([mw_root], clash, 1, "clash")
    finally:
        del _worlds.WORLDS["clash"]


def test_the_comparison_refuses_what_metaworld_cannot_run(mw_root, tmp_path):
    base = ["--world", "metaworld", "--out", str(tmp_path / "o"), "--data-root", mw_root, "--vla", str(tmp_path)]
    with pytest.raises(UserError, match="recipe 'state_bc' does not run in the metaworld world: expected some of "
                                        "scratch, lapa, vipra"):
        compare.main([*base, "--recipes", "scratch,state_bc"])
    with pytest.raises(UserError, match="has 4 train episodes"):
        compare.main([*base, "--recipes", "scratch", "--demos", "6"])
    with pytest.raises(UserError, match=r"no metaworld_robot dataset .* scripts/demo.py --world metaworld"):
        compare.main([*base[:4], "--data-root", str(tmp_path), "--recipes", "scratch"])
    assert not (tmp_path / "o" / "logs").exists()


def test_transfer_grids_use_whole_rounds_of_the_target_tasks():
    """metaworld_robot episode i plays task i mod 6: demo counts and evaluation episodes that are multiples of 6 give
    every target task the same number of demos and of evaluation episodes."""
    n = len(mw_tasks.ROBOT_TASKS)
    for preset in ("transfer", "transfer_gpu"):
        g = compare.GRIDS[preset]
        assert all(int(d) % n == 0 for d in g["demos"].split(",")) and g["episodes"] % n == 0, preset
        assert set(g["recipes"].split(",")) <= set(_worlds.WORLDS["metaworld"].recipes)
    for budget in _worlds.WORLDS["metaworld"].budgets.values():
        assert budget.compare_preset in compare.GRIDS
        assert max(int(d) for d in compare.GRIDS[budget.compare_preset]["demos"].split(",")) <= budget.episodes


@pytest.mark.slow
def test_metaworld_transfer_smoke(tmp_path):
    """The whole experiment as one command, every training stage 2 steps (numbers meaningless): data, VQGAN, both
    LAMs, both pretrainings, then scratch / LAPA / ViPRA fine-tuned on target-task demos and evaluated on the target
    tasks. Default-tier counterparts: the command-construction and bookkeeping tests above."""
    pytest.importorskip("metaworld")
    out = tmp_path / "run"
    t0 = time.time()
    p = subprocess.run([sys.executable, "scripts/demo.py", "--world", "metaworld", "--smoke", "2", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    manifest = json.loads((out / "compare" / "manifest.json").read_text())
    assert manifest["setup"]["world"] == "metaworld"
    assert [j["name"] for j in manifest["jobs"]] == ["scratch_4_s0", "lapa_4_s0", "vipra_4_s0"]
    for j in manifest["jobs"]:
        res = json.loads((Path(j["eval_done"])).read_text())
        assert res["world"] == "metaworld" and res["settings"]["world_config"]["tasks"] == list(mw_tasks.ROBOT_TASKS)
        assert [r["seed"] for r in res["records"]] == [2**31 + 1000, 2**31 + 1001]  # compare's --eval-seed 1000
        assert {r["family"] for r in res["records"]} <= set(mw_tasks.ROBOT_TASKS)
    md = (out / "compare" / "report.md").read_text()
    assert md.startswith("# Meta-World transfer") and "world seeds 2147484648–2147484649" in md
    run = json.loads((out / "logs" / "run.json").read_text())  # data, VQGAN, 2 LAMs + evaluations, 2 pretrainings
    assert [s["name"] for s in run["stages"] if s["status"] == "ran"][:8] == [
        "data", "vqgan", "lam_lapa", "lam_lapa_eval", "lam_vipra", "lam_vipra_eval", "vla_lapa", "vla_vipra"]
    print(f"metaworld --smoke 2: {time.time() - t0:.0f} s wall")

