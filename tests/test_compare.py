"""The comparison harness (scripts/compare.py, policy/compare_report.py): paired-seed bookkeeping, the statistics on
hand-worked numbers, the report of a tiny run, resuming a killed comparison, the evaluation-seed refusal, and the
reduced call of `make demo`'s stage 5."""

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _stages  # noqa: E402
import compare  # noqa: E402  (scripts/compare.py)
import report  # noqa: E402  (scripts/report.py)

from core.errors import UserError  # noqa: E402
from data.demo import writer  # noqa: E402
from policy import compare_report as cr  # noqa: E402

WORLDS = [1000, 1001, 1002, 1003]
FAMS = ["touch_block", "push_direction", "touch_block", "push_direction"]


def _run(recipe, variant, seed, success, progress, *, demos=10, worlds=WORLDS, fams=FAMS, world="{}") -> cr.Run:
    recs = tuple({"seed": w, "family": f, "success": bool(s), "progress": p}
                 for w, f, s, p in zip(worlds, fams, success, progress, strict=True))
    name = f"{recipe}{'-' + variant if variant else ''}_{demos}_s{seed}"
    return cr.Run(recipe, variant, demos, seed, recs, world, name)


# per-world progress means over the two seeds: scratch [0.1, 0.1, 0.8, 0.1], lapa (robot+human) [0.7, 0.2, 1.0, 0.65]
SCRATCH = [_run("scratch", "", 0, [0, 0, 1, 0], [0.2, 0.0, 1.0, 0.1]),
           _run("scratch", "", 1, [0, 0, 0, 0], [0.0, 0.2, 0.6, 0.1])]
LAPA = [_run("lapa", "robot+human", 0, [1, 0, 1, 0], [1.0, 0.3, 1.0, 0.3]),
        _run("lapa", "robot+human", 1, [0, 0, 1, 1], [0.4, 0.1, 1.0, 1.0])]
LAPA_ROBOT = [_run("lapa", "robot", 0, [1, 0, 1, 0], [0.9, 0.2, 0.9, 0.2]),  # every episode 0.1 less progress
              _run("lapa", "robot", 1, [0, 0, 1, 1], [0.3, 0.0, 0.9, 0.9])]


@pytest.fixture(autouse=True)
def _fresh_stages(monkeypatch):
    monkeypatch.setattr(_stages, "STAGES", [])


def test_paired_differences_use_matched_world_seeds_and_refuse_a_mismatch():
    d = cr.paired(LAPA, SCRATCH, "progress")
    # per world: (0.7 - 0.1, 0.2 - 0.1, 1.0 - 0.8, 0.65 - 0.1) = (0.6, 0.1, 0.2, 0.55), mean 0.3625
    assert d["mean"] == pytest.approx(0.3625) and d["worlds"] == 4
    s = cr.paired(LAPA, SCRATCH, "success")  # (0.5 - 0, 0 - 0, 1 - 0.5, 0.5 - 0)
    assert s["mean"] == pytest.approx(0.375)
    # touch_block only (worlds 1000, 1002): differences 0.6 and 0.2; the bootstrap means of two values are 0.2, 0.4
    # or 0.6 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are exactly 0.2 and 0.6
    t = cr.paired(LAPA, SCRATCH, "progress", "touch_block")
    assert t["mean"] == pytest.approx(0.4) and t["ci95"] == pytest.approx([0.2, 0.6]) and t["worlds"] == 2
    abl = cr.paired(LAPA, LAPA_ROBOT, "progress")  # a constant difference: a zero-width interval at it
    assert abl["mean"] == pytest.approx(0.1) and abl["ci95"] == pytest.approx([0.1, 0.1])

    shifted = _run("lapa", "robot+human", 2, [0, 0, 0, 0], [0.0] * 4, worlds=[1001, 1002, 1003, 1004])
    want = r"scratch_10_s0 and lapa-robot\+human_10_s2 played different world seeds \(only in the first: \[1000\], "
    with pytest.raises(cr.PairingError, match=want + r"only in the second: \[1004\]\)"):
        cr.paired([shifted], SCRATCH, "progress")
    with pytest.raises(cr.PairingError, match="different world seeds"):  # also among one policy's fine-tuning seeds
        cr.pooled([*LAPA, shifted])
    swapped = _run("lapa", "robot+human", 2, [0] * 4, [0.0] * 4, fams=list(reversed(FAMS)))
    with pytest.raises(cr.PairingError, match="or other tasks"):
        cr.paired([swapped], SCRATCH, "success")
    other_world = _run("lapa", "robot+human", 2, [0] * 4, [0.0] * 4, world='{"tasks": ["touch_block"]}')
    with pytest.raises(cr.PairingError, match="another world config"):
        cr.paired([other_world], SCRATCH, "success")


def test_the_seed_resampling_interval_counts_the_spread_between_fine_tuning_runs():
    """Side a: one fine-tuning run at 0.7 and one at 0.1 on every world, b: two at 0.35 (small per-world noise).
    Over world seeds alone the +0.05 gap is sharp; resampling a's two runs draws 0.7, 0.4 or 0.1 for its mean, so
    the interval with the seeds spans about [-0.25, +0.35]. With no spread anywhere it is the constant gap."""
    rng = np.random.default_rng(0)
    w = 200
    a = np.array([[0.7] * w, [0.1] * w]) + rng.uniform(-0.05, 0.05, (2, w))
    b = np.full((2, w), 0.35) + rng.uniform(-0.05, 0.05, (2, w))
    worlds = list(range(3000, 3000 + w))
    run = lambda name, s, row: _run(name, "", s, [0] * w, row.tolist(), worlds=worlds, fams=["touch_block"] * w)
    d = cr.paired([run("a", 0, a[0]), run("a", 1, a[1])], [run("b", 0, b[0]), run("b", 1, b[1])], "progress")
    assert d["mean"] == pytest.approx(0.05, abs=0.01)
    assert 0.03 < d["ci95"][0] < d["ci95"][1] < 0.07, d
    lo, hi = d["ci95_seeds"]
    assert lo == pytest.approx(-0.25, abs=0.02) and hi == pytest.approx(0.35, abs=0.02), d
    assert cr.two_level_ci(np.full((2, 4), 0.5), np.full((3, 4), 0.2)) == pytest.approx((0.3, 0.3))
    assert cr.paired(LAPA[:1], SCRATCH, "progress")["ci95_seeds"] is None  # one seed on a side: no seed interval


def test_the_seed_interval_draws_pretraining_runs_before_fine_tuning_seeds(tmp_path):
    """Side a: two pretraining runs, three fine-tuning seeds each, every run of the first at 0.7 on every world and
    of the second at 0.1; b: constant 0.35. Drawing the pretraining runs first gives a's mean 0.7, 0.4 or 0.1 with
    probabilities 1/4, 1/2, 1/4, so the interval of a − b is exactly [−0.25, +0.35]. Treating the six runs as
    independent seeds draws 6 of them: all six from one pretraining run has probability 2 · 2^-6 < 2.5 %, so that
    interval is [−0.15, +0.25], too narrow: runs sharing a pretraining are not independent."""
    w = 50
    a = np.array([[0.7] * w] * 3 + [[0.1] * w] * 3)
    b = np.full((3, w), 0.35)
    lo, hi = cr.two_level_ci(a, b, pretrain_a=[0, 0, 0, 1, 1, 1], pretrain_b=[0, 0, 0])
    assert (lo, hi) == pytest.approx((-0.25, 0.35))
    assert cr.two_level_ci(a, b) == pytest.approx((-0.15, 0.25))
    # through paired(): the runs' pretrain field decides the grouping; the pooled table shows it as 'p1:S'
    worlds = list(range(3000, 3000 + w))
    run = lambda name, s, k, row: dataclasses.replace(
        _run(name, "r", s, [0] * w, row.tolist(), worlds=worlds, fams=["touch_block"] * w), pretrain=k)
    side_a = [run("vipra", s % 3, s // 3, a[s]) for s in range(6)]
    d = cr.paired(side_a, [run("scratch", s, 0, b[s]) for s in range(3)], "progress")
    assert d["mean"] == pytest.approx(0.05) and d["ci95_seeds"] == pytest.approx([-0.25, 0.35])
    assert cr.pooled(side_a)["units"] == ["0", "1", "2", "p1:0", "p1:1", "p1:2"]
    setup = {"demos": [10], "seeds": [0, 1, 2], "episodes": w, "eval_seed": 3000}
    scratch = [dataclasses.replace(run("scratch", s, 0, b[s]), variant="") for s in range(3)]
    cr.write_report(str(tmp_path), [*side_a, *scratch],
                    recipes=["scratch", "vipra"], variants=["r"], setup=setup, version_info={"git": "abc"})
    md = (tmp_path / "report.md").read_text()
    assert "fine-tuning seeds [0, 1, 2] (from every pretraining run of the variant: vipra (r) 2 runs;" in md
    assert "| vipra | r | 10 | 0,1,2,p1:0,p1:1,p1:2 |" in md
    assert "| vipra | r | 10 | 50 | +0.0 [+0.0, +0.0] | +0.050 [+0.050, +0.050] | [-0.250, +0.350] |" in md
    two = [dataclasses.replace(r, variant="r2", name=r.name + "2") for r in side_a[:3]]
    groups = cr.group([*side_a, *two], ["vipra"], ["r", "r2"])
    abl = "\n".join(cr.scope_tables(groups, None, ["r", "r2"])).split("Pretraining ablation")[1]
    assert "one pretraining run per variant" not in abl.splitlines()[0] and "| vipra | r − r2 | 10 |" in abl


def test_pooled_figures_by_hand():
    worlds = list(range(2000, 2005))
    runs = [_run("x", "", 0, [1, 0, 0, 0, 0], [1.0, 0.0, 0.2, 0.0, 0.3], worlds=worlds, fams=["separate"] * 5),
            _run("x", "", 1, [1, 1, 0, 0, 0], [1.0, 1.0, 0.4, 0.1, 0.1], worlds=worlds, fams=["separate"] * 5)]
    p = cr.pooled(runs)
    # 3 successes in 10 episodes: Wilson 95 % (z = 1.96) = [0.1078, 0.6032]
    assert (p["successes"], p["episodes"], p["worlds"]) == (3, 10, 5)
    assert p["ci95"] == pytest.approx([0.10779, 0.60323], abs=1e-5)
    assert p["progress"] == pytest.approx(0.41)
    assert p["seed_success"] == pytest.approx([0.2, 0.4]) and p["seed_progress"] == pytest.approx([0.3, 0.52])
    # the progress interval resamples the 5 world seeds' means (1.0, 0.5, 0.3, 0.05, 0.2), not the 10 episodes
    lo, hi = p["progress_ci95"]
    assert 0.05 <= lo < 0.41 < hi <= 1.0
    assert cr.pooled(runs, "touch_block") == {}


def test_report_of_a_tiny_run(tmp_path):
    gif = tmp_path / "lapa-robot+human_10_s0" / "rollouts" / "000_seed1000_success_touch.gif"
    gif.parent.mkdir(parents=True)
    gif.write_bytes(b"GIF89a" + b"\0" * 16)
    runs = [*SCRATCH, dataclasses.replace(LAPA[0], gifs=(str(gif),)), LAPA[1], *LAPA_ROBOT]
    setup = {"demos": [10], "seeds": [0, 1], "episodes": 4, "eval_seed": 1000, "data_root": "data", "data_seeds": 440,
             "command": "python scripts/compare.py --demos 10"}
    paths = cr.write_report(str(tmp_path), runs, recipes=["scratch", "lapa"], variants=["robot+human", "robot"],
                            setup=setup, commands=["python -m policy.finetune --x"],
                            version_info={"git": "abc", "jax": "0.0"})
    for p in paths:
        assert Path(p).is_file(), p
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Overall", "## Family: touch_block", "## Family: push_direction", "## Example rollouts",
                    "## Versions", "## Commands"):
        assert heading in md, heading
    assert "world seeds 1000–1003" in md and "440 data-generation world seeds" in md
    assert "| scratch | — | 10 | 0,1 | 12.5 [2.2, 47.1] (1/8) |" in md  # Wilson(1, 8), per seed 25 / 0 %
    assert "| 25 / 0 |" in md
    touch = md.split("## Family: touch_block")[1].split("## Family:")[0]
    assert "| lapa | robot+human | 10 | 2 | +50.0 [+50.0, +50.0] | +0.400 [+0.200, +0.600] |" in touch
    assert "| lapa | robot+human − robot | 10 | 4 | +0.0 [+0.0, +0.0] | +0.100 [+0.100, +0.100] |" in md
    assert "(lapa-robot+human_10_s0/rollouts/000_seed1000_success_touch.gif)" in md
    assert "python -m policy.finetune --x" in md and "git abc" in md
    # comparison.md is what the run report (scripts/report.py) shows as the comparison table
    rows = report.markdown_table((tmp_path / "comparison.md").read_text())
    assert rows[0][:2] == ["policy", "demos"] and [r[0] for r in rows[1:]] == ["scratch", "lapa (robot+human)",
                                                                              "lapa (robot)"]


def test_pretraining_ablation_has_every_pair_of_variants_in_order():
    # a third variant, "robot400", 0.05 less progress than robot+human per episode (so 0.05 more than robot)
    r400 = [dataclasses.replace(r, variant="robot400", name=r.name.replace("robot+human", "robot400"),
                                records=tuple({**e, "progress": e["progress"] - 0.05} for e in r.records))
            for r in LAPA]
    variants = ["robot+human", "robot400", "robot"]
    groups = cr.group([*LAPA, *r400, *LAPA_ROBOT], ["lapa"], variants)
    md = "\n".join(cr.scope_tables(groups, None, variants)).split("Pretraining ablation")[1]
    assert md.startswith(" (same recipe and N, paired on world seeds; the last column as above; one pretraining run")
    pairs = [line.split(" | ")[1] for line in md.splitlines() if line.startswith("| lapa |")]
    assert pairs == ["robot+human − robot400", "robot+human − robot", "robot400 − robot"]
    assert "| lapa | robot400 − robot | 10 | 4 | +0.0 [+0.0, +0.0] | +0.050 [+0.050, +0.050] |" in md
    assert "| lapa | robot+human − robot400 | 10 | 4 | +0.0 [+0.0, +0.0] | +0.050 [+0.050, +0.050] |" in md


def test_sensitivity_rows_by_hand():
    # scratch at 10 demos (SCRATCH: world means [0.1, 0.1, 0.8, 0.1]) and at 50 with every episode's progress +0.1
    # and every success 1: paired +0.1 progress on each world seed; success 1/8 -> 8/8 (Wilson intervals disjoint);
    # per-world success gains [1, 1, 0.5, 1]
    more = [dataclasses.replace(r, demos=50, name=r.name.replace("_10_", "_50_"),
                                records=tuple({**e, "progress": e["progress"] + 0.1, "success": True}
                                              for e in r.records)) for r in SCRATCH]
    groups = cr.group([*SCRATCH, *more, *LAPA], ["scratch", "lapa"], ["robot+human"])
    rows = cr.sensitivity_rows(groups, None)
    assert rows == [["scratch", "—", "50 − 10", "+87.5 [+62.5, +100.0]", "+0.100 [+0.100, +0.100]", "yes", "no"]]
    assert cr.sensitivity_rows(groups, "touch_block")[0][3:] == ["+75.0 [+50.0, +100.0]", "+0.100 [+0.100, +0.100]",
                                                                  "no", "no"]  # 4 episodes: too few to separate
    md = "\n".join(cr.scope_tables(groups, None, ["robot+human"]))
    assert "Sensitivity to the number of demos" in md and "| scratch | — | 50 − 10 |" in md


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    a = {"out": str(tmp_path / "cmp"), "data_root": "data", "recipes": ["scratch", "state_bc"], "demos": [4, 8],
         "seeds": [0, 1], "episodes": 3, "eval_seed": 1000, "steps": 0, "ref_steps": 0, "finetune_arg": [],
         "ref_arg": [], "gif_episodes": 0, "world": "demo"}
    return argparse.Namespace(**{**a, **kw})


class FakeRunner:
    """Writes what each command would (a finished training, a complete test.json) and counts the calls; with
    `kill_at` it dies on that call after leaving a partial output, as a killed process would."""

    def __init__(self, episodes: int, eval_seed: int, kill_at: int = 0) -> None:
        self.calls: list[str] = []
        self.episodes, self.eval_seed, self.kill_at = episodes, eval_seed, kill_at

    def __call__(self, name, cmd, out, done, *, total=None) -> None:
        self.calls.append(name)
        path = Path(done)
        path.parent.mkdir(parents=True, exist_ok=True)
        killed = len(self.calls) == self.kill_at
        if name.endswith(".test"):
            recs = [{"seed": self.eval_seed + i, "family": "touch_block", "success": i % 2 == 0, "progress": 0.5}
                    for i in range(self.episodes)]
            text = json.dumps({"episodes": self.episodes, "settings": {"seed": self.eval_seed}, "records": recs})
            path.write_text(text[:len(text) // 2] if killed else text)
        elif path.name == "reference.json":
            (path.parent / "params.msgpack").write_bytes(b"\x80")
            if not killed:
                path.write_text(json.dumps({"curve": [[1, 0.5], [20, 0.1]]}))
        else:
            (path.parent / "checkpoints").mkdir(exist_ok=True)
            if not killed:
                path.write_text(json.dumps({"steps": 5}))
        if killed:
            raise KeyboardInterrupt  # what Ctrl-C or a kill leaves: no stamp, a partial output


def _go(jobs, a, runner, redo=()) -> list[str]:
    compare.run_jobs(jobs, a.out, redo=list(redo), redo_all=False, episodes=a.episodes, eval_seed=a.eval_seed,
                     runner=runner)
    return runner.calls


def test_a_killed_comparison_resumes_and_redoes_only_what_is_unfinished(tmp_path, capsys):
    a = _args(tmp_path)
    jobs = compare.plan(a, {"": ["vla"]})
    assert [j.name for j in jobs[:4]] == ["scratch_4_s0", "state_bc_4_s0", "scratch_8_s0", "state_bc_8_s0"]
    assert len(jobs) == 8 and {j.seed for j in jobs[4:]} == {1}  # seed-major
    sc = jobs[0]
    assert "--config.train.seed=0" in sc.train and "--config.policy.eval_episodes=0" in sc.train
    assert "--config.policy.tokenizers_from=vla/vipra" in sc.train
    assert sc.evaluate[sc.evaluate.index("--seed") + 1] == "1000" and "--data" in sc.evaluate
    assert jobs[1].train[2] == "policy.reference" and jobs[1].train[jobs[1].train.index("--seed") + 1] == "0"

    first = FakeRunner(a.episodes, a.eval_seed, kill_at=6)  # dies writing jobs[2]'s test.json
    with pytest.raises(KeyboardInterrupt):
        _go(jobs, a, first)
    second = FakeRunner(a.episodes, a.eval_seed, kill_at=2)  # redoes that evaluation, dies training jobs[3]
    with pytest.raises(KeyboardInterrupt):
        _go(jobs, a, second)
    assert second.calls == ["scratch_8_s0.test", "state_bc_8_s0"]
    third = FakeRunner(a.episodes, a.eval_seed)
    assert _go(jobs, a, third) == ["state_bc_8_s0", "state_bc_8_s0.test"] + [
        n for j in jobs[4:] for n in (j.name, j.name + ".test")]
    assert _go(jobs, a, FakeRunner(a.episodes, a.eval_seed)) == []  # everything finished: nothing reruns
    logs = Path(a.out) / "logs"
    for stamp in logs.glob("*.cmd.json"):  # the same commands from another virtual environment: still reused
        cmd = json.loads(stamp.read_text())
        stamp.write_text(json.dumps(["/elsewhere/.venv/bin/python3", *cmd[1:]]))
    assert _go(jobs, a, FakeRunner(a.episodes, a.eval_seed)) == []
    stamp = logs / f"{jobs[0].name}.cmd.json"
    stamp.write_text(stamp.read_text().replace("--config.train.seed=0", "--config.train.seed=7"))
    capsys.readouterr()
    assert _go(jobs, a, FakeRunner(a.episodes, a.eval_seed)) == [jobs[0].name, jobs[0].name + ".test"]
    assert "--config.train.seed=7' -> '--config.train.seed=0'" in capsys.readouterr().out

    Path(jobs[1].eval_done).write_text('{"episodes": 3, "records": [')  # a truncated evaluation
    (Path(jobs[4].workdir) / "summary.json").unlink()  # a fine-tune without its summary: redone, and its evaluation
    assert _go(jobs, a, FakeRunner(a.episodes, a.eval_seed)) == ["state_bc_4_s0.test", "scratch_4_s1",
                                                                 "scratch_4_s1.test"]
    assert _go(jobs, a, FakeRunner(a.episodes, a.eval_seed), redo=["scratch_4"]) == [
        "scratch_4_s0", "scratch_4_s0.test", "scratch_4_s1", "scratch_4_s1.test"]
    more = compare.plan(_args(tmp_path, episodes=4), {"": ["vla"]})  # another grid: every evaluation, no training
    assert _go(more, _args(tmp_path, episodes=4), FakeRunner(4, a.eval_seed)) == [j.name + ".test" for j in more]
    assert len(compare.finished_runs(more, 4, a.eval_seed)) == 8


def test_the_comparison_prints_how_long_the_runs_left_will_take(tmp_path, capsys, monkeypatch):
    a = _args(tmp_path)
    jobs = compare.plan(a, {"": ["vla"]})  # scratch, state_bc at 4 and 8 demos, seeds 0 and 1
    ticks = iter(range(0, 10_000, 100))  # every clock() call 100 s after the last: each run takes 100 s
    monkeypatch.setattr(compare, "clock", lambda: float(next(ticks)))
    _go(jobs[:2], a, FakeRunner(a.episodes, a.eval_seed))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  ~ ")]
    basis = "(mean per recipe: this run's, else recorded)"
    assert lines == [f"  ~ about 0:01:40 left for 1 run {basis}"]  # state_bc: scratch's mean
    # the other six: three scratch runs at their mean 500 s, three state BC at 10 s; jobs not pending are not counted
    took = {"scratch": [600.0, 400.0], "state_bc": [10.0]}
    assert compare.eta(jobs[2:], took, lambda j: True) == f"about 0:25:30 left for 6 runs {basis}"
    assert compare.eta(jobs[2:], took, lambda j: j.recipe == "state_bc") == f"about 0:00:30 left for 3 runs {basis}"
    assert compare.eta(jobs[2:], {}, lambda j: True) == "" and compare.eta([], took, lambda j: True) == ""

    # --report-only: the same estimate from the stage records of the runs that finished (a grid filled over sessions)
    logs = Path(a.out) / "logs"
    for name, secs in (("scratch_4_s0", 400), ("scratch_4_s0.test", 100), ("state_bc_4_s0", 10),
                       ("state_bc_4_s0.test", 5), ("scratch_8_s0", 450)):  # scratch_8_s0 has no evaluation record
        (logs / f"{name}.stage.json").write_text(json.dumps({"name": name, "seconds": secs}))
    took = compare.recorded_times(jobs, a.out)
    assert took == {"scratch": [500.0], "state_bc": [15.0]}
    assert compare.eta(jobs[2:], took, lambda j: True, "at the recorded mean per recipe") == (
        "about 0:25:45 left for 6 runs (at the recorded mean per recipe)")  # 3 × 500 + 3 × 15 s
    # and while a grid runs, a recipe it has not run yet is costed at its recorded runs (state BC 15 s, not 100 s)
    capsys.readouterr()
    _go(jobs, a, FakeRunner(a.episodes, a.eval_seed))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  ~ ")]
    assert lines[0] == f"  ~ about 0:04:05 left for 5 runs {basis}"  # 2 × 100 + 3 × 15 s


def test_lapa_is_also_paired_against_its_own_layout_from_scratch(tmp_path):
    # lapa_scratch: every episode 0.1 less progress than LAPA (robot+human), one success fewer per seed
    lapa_scratch = [_run("lapa_scratch", "", 0, [0, 0, 1, 0], [0.9, 0.2, 0.9, 0.2]),
                    _run("lapa_scratch", "", 1, [0, 0, 1, 0], [0.3, 0.0, 0.9, 0.9])]
    groups = cr.group([*SCRATCH, *LAPA, *lapa_scratch], ["scratch", "lapa", "lapa_scratch"], ["robot+human"])
    md = "\n".join(cr.scope_tables(groups, None, ["robot+human"]))
    within = md.split("Pretraining within its fine-tuning layout")[1]
    # success: LAPA 2 of 4 per seed, lapa_scratch 1 of 4 then 1 of 4 -> per world (0.5, 0, 1, 0.5) - (0, 0, 1, 0)
    assert "| lapa − lapa_scratch | robot+human | 10 | 4 | +25.0 [+0.0, +50.0] | +0.100 [+0.100, +0.100] |" in within
    # lapa_scratch is a random-init recipe: it is compared with scratch, and no layout baseline is looked up for it
    assert "| lapa_scratch | — | 10 | 4 |" in md.split("Paired differences vs scratch")[1]
    assert "lapa_scratch − " not in md


def test_variants_and_recipes_from_the_command_line():
    assert compare.parse_variants(None) == {"": ["runs/demo/vla"]}
    assert compare.parse_variants(["x/vla"]) == {"": ["x/vla"]}
    assert compare.parse_variants(["robot+human=a", "robot=b"]) == {"robot+human": ["a"], "robot": ["b"]}
    assert compare.parse_variants(["robot+human=a,a2", "robot=b"]) == {"robot+human": ["a", "a2"], "robot": ["b"]}
    for bad in (["a", "robot=b"], ["r=a", "r=b"], ["bad name=a", "r=b"]):
        with pytest.raises(UserError, match="NAME=DIR"):
            compare.parse_variants(bad)
    for bad in (["r=a,"], ["r=a,a"], ["x,,y"]):
        with pytest.raises(UserError, match="one per pretraining run"):
            compare.parse_variants(bad)
    a = _args(Path("/t"), recipes=["lapa", "vipra", "scratch"], demos=[4], seeds=[0])
    jobs = compare.plan(a, {"robot+human": ["v1"], "robot": ["v2"]})
    assert [j.name for j in jobs] == ["lapa-robot+human_4_s0", "lapa-robot_4_s0", "vipra-robot+human_4_s0",
                                      "vipra-robot_4_s0", "scratch_4_s0"]
    assert "--config.policy.pretrained=v2/lapa" in jobs[1].train
    assert "--config.policy.tokenizers_from=v1/vipra" in jobs[4].train
    # the LAPA layout from a random init: LAPA's fine-tuning preset, no weights, the LAPA run's tokenizers
    (job,) = compare.plan(_args(Path("/t"), recipes=["lapa_scratch"], demos=[4], seeds=[1]), {"robot": ["v2"]})
    assert job.name == "lapa_scratch_4_s1"
    assert {"--config=configs/policy.py:lapa_demo", "--config.policy.tokenizers_from=v2/lapa"} <= set(job.train)
    assert not any(t.startswith("--config.policy.pretrained=") for t in job.train)
    # two pretraining runs of one variant: every seed from each; the first keeps the single-run name (resumable)
    jobs = compare.plan(_args(Path("/t"), recipes=["vipra", "scratch"], demos=[4], seeds=[0, 1]),
                        {"robot": ["v2", "v2b"]})
    assert [(j.name, j.pretrain) for j in jobs] == [
        ("vipra-robot_4_s0", 0), ("vipra-robot@p1_4_s0", 1), ("scratch_4_s0", 0),
        ("vipra-robot_4_s1", 0), ("vipra-robot@p1_4_s1", 1), ("scratch_4_s1", 0)]
    assert "--config.policy.pretrained=v2b/vipra" in jobs[1].train and "--config.train.seed=1" in jobs[4].train
    assert "--config.policy.tokenizers_from=v2/vipra" in jobs[2].train
    assert compare._matches("vipra-robot@p1_4_s1", ["vipra-robot@p1_4"])
    assert not compare._matches("vipra-robot_4_s1", ["vipra-robot@p1_4"])


def test_world_seeds_are_the_datasets_and_an_overlapping_eval_range_is_refused(demo_data, tmp_path):
    from data.tf_setup import tfds

    seeds = writer.world_seeds(demo_data)
    stored = set()
    for name in ("demo_robot", "demo_human"):
        b = tfds.builder_from_directory(str(Path(demo_data) / name / "1.0.0"))
        for split in ("train", "val"):
            stored |= {int(ep["episode_metadata"]["seed"]) for ep in tfds.as_numpy(b.as_dataset(split=split))}
    assert set(seeds) == stored and len(stored) == 10
    s = min(seeds)
    assert compare.check_eval_seeds([demo_data], s - 5, 5) == 10  # ends just before the first one: accepted
    with pytest.raises(UserError, match=rf"evaluation world seeds {s - 3}-{s + 1} .* e\.g\. {s} \(demo_"):
        compare.check_eval_seeds([demo_data, str(tmp_path)], s - 3, 5)
    with pytest.raises(UserError, match=rf"e\.g\. {s} "):  # the CLI refuses before running anything
        compare.main(["--out", str(tmp_path / "o"), "--data-root", demo_data, "--recipes", "state_bc", "--demos",
                      "2", "--seeds", "0", "--episodes", "5", "--eval-seed", str(s - 3)])
    assert not (tmp_path / "o" / "logs").exists()
    with pytest.raises(UserError, match="has 3 train episodes"):
        compare.main(["--out", str(tmp_path / "o"), "--data-root", demo_data, "--recipes", "state_bc", "--demos",
                      "4"])


def test_demo_stage_5_runs_a_reduced_comparison(tmp_path, monkeypatch):
    import demo  # scripts/demo.py

    calls, data = [], []
    monkeypatch.setattr(demo, "generate_data", lambda sets, out, force=False: data.append(sets))
    monkeypatch.setattr(demo, "run_stage", lambda *a, **k: False)  # stages 2-4 "reused"
    monkeypatch.setattr(compare, "main", lambda argv: calls.append(argv) or 0)
    assert demo.main(["--out", str(tmp_path)]) == 0
    assert demo.main(["--out", str(tmp_path), "--smoke", "3", "--seed", "2"]) == 0
    full, smoke = (dict(zip(c[::2], c[1::2], strict=True)) for c in calls)
    assert full["--preset"] == "demo" and not {"--demos", "--seeds", "--episodes", "--steps"} & set(full)
    assert (smoke["--demos"], smoke["--episodes"], smoke["--steps"], smoke["--ref-steps"]) == ("4", "2", "3", "3")
    # stage 1 writes stage 5's labelled demos beside the pretraining data: the two short families, robot only, the
    # measured slices' generation (seed 7, 2 shards); a different --seed moves both datasets' seeds
    (pre, ft), (pre2, ft2) = data
    assert full["--data-root"] == ft[0] == str(tmp_path / "data_finetune") and pre[0] == str(tmp_path / "data")
    assert ft[1] == dataclasses.replace(pre[1], tasks=("touch_block", "push_direction"), embodiments=("robot",),
                                        seed=7, num_shards=2)
    assert (pre2[1].seed, ft2[1].seed) == (2, 9) and ft2[1].episodes == ft[1].episodes == pre[1].episodes
    # the preset: one demo count, one seed, 100 episodes, of the references only the cheap one
    g = compare.GRIDS["demo"]
    assert "," not in g["demos"] and g["seeds"] == "0" and g["episodes"] == 100
    assert set(g["recipes"].split(",")) == {"scratch", "lapa", "vipra", "state_bc"}


def test_demo_redo_names_a_stage_or_stage_5_runs_and_nothing_else(tmp_path, monkeypatch, demo_data):
    """--redo NAME reached stages 1-4 only: stage-5 run names and typos were accepted and did nothing."""
    import demo  # scripts/demo.py

    forced, redone, calls = [], [], []
    monkeypatch.setattr(demo, "generate_data", lambda sets, out, force=False: forced.append(force))
    monkeypatch.setattr(demo, "run_stage", lambda name, cmd, out, done, redo, **k: redone.append(name in redo) or False)
    monkeypatch.setattr(compare, "main", lambda argv: calls.append(argv) or 0)
    assert demo.main(["--out", str(tmp_path), "--redo", "vla_lapa", "--redo", "data", "--redo", "vipra_50"]) == 0
    assert forced == [True] and sum(redone) == 1  # vla_lapa's run_stage only
    assert calls[0][calls[0].index("--redo"):] == ["--redo", "vipra_50"]  # the rest goes to compare.py
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"--redo 'vipra_51' matches no run of this grid \(runs: state_bc_2_s0"):
        compare.main(["--out", str(tmp_path / "o"), "--data-root", demo_data, "--recipes", "state_bc", "--demos",
                      "2", "--seeds", "0", "--redo", "vipra_51"])
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_stage_1_writes_only_the_dataset_it_lacks(tmp_path, monkeypatch, capsys):
    """The pretraining data already made, stage 5's demos not: only the latter is written, and the console says so."""
    import demo  # scripts/demo.py

    pre = (str(tmp_path / "data"), writer.GenerationConfig(episodes=3))
    ft = (str(tmp_path / "data_finetune"), demo.finetune_generation(pre[1], {"tasks": ("touch_block",), "seed": 7}))
    summary = {"dataset": "demo_robot/1.0.0", "episodes": 23, "steps": 99, "success_rate": 1.0, "seconds": 0.0,
               "bytes": 1, "path": "p"}
    written = []
    monkeypatch.setattr(writer, "existing_summaries", lambda d, cfg: [summary] if d == pre[0] else None)
    monkeypatch.setattr(writer, "write_datasets", lambda d, cfg, **k: written.append((d, cfg)) or [summary])
    demo.generate_data([pre, ft], str(tmp_path))
    assert written == [ft] and ft[1].seed == 7 and ft[1].tasks == ("touch_block",)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"[1/5] demo datasets: generating 3 episodes per embodiment in {ft[0]} (touch_block)"


def test_the_demo_grid_fine_tunes_in_the_measured_configuration():
    """`--preset demo` = every slice since stop 35: effector state, augmentation, 1000 steps (warm-up 30, the preset's
    own), DrQ shift for the references; an explicit flag comes after the preset's (so it wins) or replaces it."""
    a = compare.parse_args(["--preset", "demo", "--recipes", "scratch,lapa,state_bc"])
    jobs = {j.recipe: j.train for j in compare.plan(a, {"": ["vla"]})}
    for recipe in ("scratch", "lapa"):
        flags = jobs[recipe][jobs[recipe].index("--config.policy.num_demos=50"):]
        assert {"--config.model.proprio_dim=2", "--config.data.augment.enabled=True",
                "--config.train.total_steps=1000", "--config.train.optimizer.warmup_steps=30"} <= set(flags)
    assert jobs["state_bc"][-1] == "--shift=4"
    a = compare.parse_args(["--preset", "demo", "--steps", "40", "--finetune-arg=--config.model.proprio_dim=0",
                            "--ref-arg=--shift=0"])
    assert a.steps == 40 and a.finetune_arg[-1] == "--config.model.proprio_dim=0" and a.ref_arg[-1] == "--shift=0"
    assert compare.GRIDS["demo"]["finetune_arg"] == ["--config.model.proprio_dim=2",  # the merge never mutates
                                                     "--config.data.augment.enabled=True"]  # the table
    assert compare.parse_args(["--preset", "transfer"]).finetune_arg == []  # Meta-World: its presets' own


def test_the_full_grid_is_the_measured_one_by_default():
    """`compare.py` with no grid flags plans exactly the grid the slices measured (the docs' explicit command: the
    two short families make demo writes to runs/demo/data_finetune, effector state, augmentation, 1000 steps, DrQ
    shift), and its 50-demo seed-0 runs are make demo's stage 5 runs (which reproduce the slices' to every digit)."""
    vla = {"robot+human": ["runs/demo/vla"], "robot": ["runs/demo/vla_robot"]}
    default = compare.parse_args([])
    assert default.data_root == os.path.join("runs", "demo", "data_finetune")
    assert compare.parse_args(["--world", "metaworld"]).data_root == os.path.join("runs", "metaworld", "data")
    # the command docs/demo_world.md spells out, under a preset that adds no fine-tuning flags of its own (transfer's
    # grid values are all overridden), so nothing in it comes from GRIDS["full"]
    spelled = ["--data-root", "runs/demo/data_finetune", "--demos", "10,25,50,100", "--seeds", "0,1,2",
               "--episodes", "300", "--eval-seed", "1000", "--steps", "1000",
               "--finetune-arg=--config.model.proprio_dim=2", "--finetune-arg=--config.data.augment.enabled=True",
               "--ref-arg=--shift=4"]
    explicit = compare.parse_args(["--preset", "transfer", "--recipes", ",".join(compare.RECIPES), *spelled])
    jobs, documented = compare.plan(default, vla), compare.plan(explicit, vla)
    assert len(jobs) == 96
    assert [(j.name, j.train, j.evaluate) for j in jobs] == [(d.name, d.train, d.evaluate) for d in documented]
    # make demo's stage 5 (evaluated on 300 episodes here, as the grid is): the same commands but for the run
    # directory's name, since make demo's pretraining variant is unnamed
    stage5 = compare.plan(compare.parse_args(["--preset", "demo", "--out", default.out, "--episodes", "300"]),
                          {"": ["runs/demo/vla"]})
    by_name = {j.name.replace("-robot+human", ""): j for j in jobs}
    for j in stage5:
        full = by_name[j.name]
        train, evaluate = ([x.replace(j.workdir, full.workdir) for x in c] for c in (j.train, j.evaluate))
        assert (train, evaluate) == (full.train, full.evaluate), j.name


def test_bootstrap_of_world_means_is_not_the_episode_bootstrap():
    """The progress interval treats the S policies on one world seed as one observation: a policy whose seeds agree
    exactly has the interval of its world means, however many seeds ran."""
    one = [_run("y", "", 0, [0] * 4, [0.0, 1.0, 0.0, 1.0])]
    three = [_run("y", "", s, [0] * 4, [0.0, 1.0, 0.0, 1.0]) for s in range(3)]
    assert cr.pooled(one)["progress_ci95"] == cr.pooled(three)["progress_ci95"]
    assert np.isclose(cr.pooled(three)["progress"], 0.5)


def test_a_real_tiny_state_bc_comparison_runs_reports_and_is_reused(demo_data, tmp_path, capsys):
    """The real subprocesses (policy.reference, then policy.evaluate on a reference run), the report and the page;
    the same command again reuses both runs."""
    out = tmp_path / "cmp"
    argv = ["--out", str(out), "--data-root", demo_data, "--recipes", "state_bc", "--demos", "2", "--seeds", "0",
            "--episodes", "2", "--ref-steps", "20", "--gif-episodes", "1"]
    assert compare.main(argv) == 0
    res = json.loads((out / "state_bc_2_s0" / "test.json").read_text())
    assert [r["seed"] for r in res["records"]] == [1000, 1001] and res["recipe"] == "bc_state" and res["demos"] == 2
    md = (out / "report.md").read_text()
    assert md.startswith("# Demo-world comparison") and "| state_bc | — | 2 | 0 |" in md
    assert "(state_bc_2_s0/rollouts/000_seed1000_" in md
    assert (out / "index.html").is_file() and (out / "overview.md").is_file()  # the page did not overwrite report.md
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["jobs"][0]["train"][1:3] == ["-m", "policy.reference"]
    assert compare.main(argv) == 0
    assert [s.status for s in _stages.STAGES] == ["ran", "ran", "reused", "reused"]
    # a larger grid, reported only: the unfinished run is costed at the finished one's recorded stage times
    capsys.readouterr()
    assert compare.main([*argv, "--demos", "2,3", "--report-only"]) == 0
    assert re.search(r"1 of 2 policies evaluated; .*; about 0:\d\d:\d\d left for 1 run \(at the recorded mean per "
                     r"recipe\)$", capsys.readouterr().out.strip())


def test_the_report_records_what_each_pretrained_run_was(tmp_path):
    """The VLA run's checkpoint assets (config.json, frozen.json) and its LAM run's config.json, newest step."""
    lam, vla = tmp_path / "lam_robot" / "lapa", tmp_path / "vla_robot" / "lapa"
    lam_cfg = {"preset": "lapa_demo", "data": {"root": "d", "datasets": ["demo_robot"]},
               "model": {"encoder": {"kind": "patch", "layout": "factorized", "motion_stem": 2}, "code_pool": "grid",
                         "slot_codebooks": True, "quant_norm": True}}
    for step, cfg in ((100, {"preset": "old"}), (3500, lam_cfg)):
        (lam / "checkpoints" / str(step) / "assets").mkdir(parents=True)
        (lam / "checkpoints" / str(step) / "assets" / "config.json").write_text(json.dumps(cfg))
    assets = vla / "checkpoints" / "600" / "assets"
    assets.mkdir(parents=True)
    assets.joinpath("config.json").write_text(json.dumps({
        "recipe": "lapa", "preset": "demo", "train": {"total_steps": 600},
        "data": {"root": "runs/demo/data", "datasets": ["demo_robot", "demo_human@runs/human400"]}}))
    assets.joinpath("frozen.json").write_text(json.dumps({"lam": {
        "preset": "lapa_demo", "codebook_size": 8, "codes_per_step": 16, "offset": 3, "workdir": str(lam)}}))
    info = cr.pretrained_info(str(vla))
    assert (info["preset"], info["steps"], info["lam_preset"], info["lam_codes"]) == ("lapa:demo", 600, "lapa_demo",
                                                                                     "16 × 8")
    assert info["lam_datasets"] == ["demo_robot"] and info["data_roots"] == ["runs/demo/data", "runs/human400", "d"]
    assert info["lam_layout"].startswith("patch/factorized, motion stem 2")
    assert cr.pretrained_info(str(tmp_path / "nope")) == {"run": str(tmp_path / "nope"), "missing": True}
    setup = {"demos": [10], "seeds": [0, 1], "episodes": 4, "eval_seed": 1000}
    cr.write_report(str(tmp_path), SCRATCH, recipes=["scratch"], variants=["robot"], setup=setup,
                    pretrained={"robot": {"lapa": info}}, version_info={"git": "abc"})
    md = (tmp_path / "report.md").read_text()
    row = f"| robot | lapa | {vla} | lapa:demo | demo_robot+demo_human@runs/human400 | 600 | lapa_demo | demo_robot |"
    assert row in md


def test_the_report_states_what_its_runs_cost(tmp_path):
    """The Cost section sums each run's stage records (training and evaluation; wall, and CPU where recorded) and
    skips a group with no record (LAPA here); figures worked out by hand."""
    logs = tmp_path / "logs"
    logs.mkdir()
    recs = {"scratch_10_s0": (450.0, 800.0), "scratch_10_s0.test": (100.0, 190.0),
            "scratch_10_s1": (490.0, None), "scratch_10_s1.test": (100.0, 180.0)}  # s1's training: an old record
    for name, (wall, cpu) in recs.items():
        d = {"name": name, "status": "ran", "seconds": wall, "headline": "", "outputs": ""}
        if cpu is not None:
            d["cpu_seconds"] = cpu
        (logs / f"{name}.stage.json").write_text(json.dumps(d))
    setup = {"demos": [10], "seeds": [0, 1], "episodes": 4, "eval_seed": 1000, "left": "about 0:30:00 left for 2 runs"}
    cr.write_report(str(tmp_path), [*SCRATCH, *LAPA], recipes=["scratch", "lapa"], variants=["robot+human"],
                    setup=setup, version_info={"git": "abc"})
    cost = (tmp_path / "report.md").read_text().split("## Cost")[1].split("## Versions")[0]
    # training 450 / 490 s -> mean 7:50; evaluation 100 s each; 1140 s in all; CPU 800 + 190 + 180 over 3 of 4 stages
    assert "| scratch | 10 | 2 | 7:50 (7:30–8:10) | 1:40 | 19:00 | 19:30 (3 of 4) |" in cost
    rows = [ln.split("|")[1].strip() for ln in cost.splitlines() if ln.startswith("| ")]
    assert rows == ["policy", "scratch"]  # LAPA's runs have no record: no row
    assert ("All runs above: 19:00 of wall time (training 15:40, evaluation 3:20); 19:30 of CPU time over the 3 of "
            "4 stages that recorded it; 4 stage(s) without a record.") in cost
    assert "Still to run in this grid: about 0:30:00 left for 2 runs." in cost
