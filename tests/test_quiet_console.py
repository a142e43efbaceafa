"""The demo's console is the compact form: per stage a start line with the command, one line of key figures and a
summary table at the end; third-party noise (TFDS bars, absl/oneDNN/TF notices) and JSON dumps stay in the logs."""

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _stages  # noqa: E402  (scripts/_stages.py)

from core import quiet  # noqa: E402

# what a stage subprocess prints today besides its figures (one of each kind seen in a `make demo` log)
NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1733212345.123456   12345 cpu_feature_guard.cc:210] oneDNN custom operations are on.",
    "W1203 08:00:00.000000 140000 deprecation.py:50] Instructions for updating: Use `tf.data.Dataset.counter(...)`",
    "Generating train examples...: 100%|##########| 20/20 [00:01<00:00, 15.1 examples/s]",
    "Shuffling /tmp/x/demo_robot-train.tfrecord*...:  50%|#####     | 10/20",
]
# a marker that would only reach the console through a JSON dump of the stage's summary
SUMMARY = {"success_rate": 0.5, "ci95": [0.2, 0.8], "successes": 2, "episodes": 4, "dump_marker": "xyzzy"}

BANNED = re.compile(r"absl|oneDNN|InitializeLog|Instructions for updating|Generating train|Shuffling|xyzzy|^\s*[{}]")


def _fake_stage(tmp_path: Path, code: int = 0) -> list[str]:
    """A child that prints every kind of noise, a JSON dump and progress lines, and writes closed_loop.json."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:  # CPU time the stage record must count
            pass
        for line in {NOISE_LINES!r}:
            print(line, file=sys.stderr if line[0] in "WI" else sys.stdout, flush=True)
        for step in (5, 10):
            print(f"step {{step}} | loss=0.5 | 3.1 step/s", flush=True)
        print(json.dumps({SUMMARY!r}, indent=2), flush=True)
        print("TF_CPP_MIN_LOG_LEVEL=" + os.environ.get("TF_CPP_MIN_LOG_LEVEL", "unset"), flush=True)
        if {code}:
            print("ValueError: the actual reason", flush=True)
            sys.exit({code})
        os.makedirs(sys.argv[1], exist_ok=True)
        with open(os.path.join(sys.argv[1], "closed_loop.json"), "w") as f:
            json.dump({SUMMARY!r}, f, indent=2)
    """))
    return [sys.executable, str(script), str(tmp_path / "run" / "wd"), "--config.train.total_steps=10"]


@pytest.fixture(autouse=True)
def _fresh_stages(monkeypatch):
    monkeypatch.setattr(_stages, "STAGES", [])


def test_stage_console_is_compact_and_log_is_complete(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cmd, out = _fake_stage(tmp_path), str(tmp_path / "run")
    done = str(tmp_path / "run" / "wd" / "closed_loop.json")
    assert _stages.run_stage("policy_4", cmd, out, done, set()) is True
    console = capsys.readouterr()
    lines = (console.out + console.err).splitlines()
    assert len(lines) == 2, lines  # the start line and the figures line, nothing else
    assert lines[0].startswith("  > policy_4: python ") and "child.py" in lines[0] and "logs/policy_4.log" in lines[0]
    assert re.fullmatch(r"  policy_4 done in \d+ s: success 50\.0% \[20\.0, 80\.0\] \(2/4\)", lines[1]), lines[1]
    assert not [ln for ln in lines if BANNED.search(ln)]
    log = (tmp_path / "run" / "logs" / "policy_4.log").read_text()
    for noise in NOISE_LINES:  # nothing is lost: the full output stays in the log
        assert noise in log
    assert '"dump_marker": "xyzzy"' in log
    assert "TF_CPP_MIN_LOG_LEVEL=3" in log  # the child got the quiet environment
    rec = json.loads((tmp_path / "run" / "logs" / "policy_4.stage.json").read_text())
    assert rec["status"] == "ran" and rec["headline"].startswith("success 50.0%")
    assert rec["cpu_seconds"] >= 0.3  # the child's CPU time (its busy loop and start-up), not the parent's

    # the same command again is reused: one line, with the figures, and the table lists both runs
    assert _stages.run_stage("policy_4", cmd, out, done, set()) is False
    again = capsys.readouterr().out.splitlines()
    assert len(again) == 1 and again[0].startswith("  = policy_4: reusing") and "success 50.0%" in again[0]
    assert [s.cpu_seconds for s in _stages.STAGES] == [rec["cpu_seconds"]] * 2  # a reuse keeps the times it took
    table = _stages.summary_table().splitlines()
    assert table[0].split() == ["stage", "status", "time", "headline", "outputs"]
    assert [row.split()[:2] for row in table[1:]] == [["policy_4", "ran"], ["policy_4", "reused"]]


def test_failed_stage_shows_the_reason_not_the_noise(tmp_path, capsys):
    cmd, out = _fake_stage(tmp_path, code=3), str(tmp_path / "run")
    with pytest.raises(SystemExit, match=r"stage bad failed \(exit 3\); see .*logs/bad\.log"):
        _stages.run_stage("bad", cmd, out, str(tmp_path / "run" / "wd" / "closed_loop.json"), set())
    text = capsys.readouterr().out
    assert "ValueError: the actual reason" in text
    assert not [ln for ln in text.splitlines() if re.search(r"absl|oneDNN|InitializeLog|Instructions for", ln)]
    assert _stages.STAGES[-1].status == "failed"
    assert json.loads((tmp_path / "run" / "logs" / "bad.stage.json").read_text())["status"] == "failed"


def test_child_env_adds_quiet_defaults_but_keeps_the_users_choice():
    env = quiet.child_env({"PATH": "/bin"})
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3" and env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    assert quiet.child_env({"TF_CPP_MIN_LOG_LEVEL": "0"})["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"  # stages get huge-page malloc (docs/training.md)
    assert "GLIBC_TUNABLES" not in quiet.child_env({"LATENT_VLA_MALLOC": "default"})  # the switch reaches stages
    assert quiet.child_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
@pytest.mark.parametrize("extra, expected", [
    ({}, ["start", "start", "glibc.malloc.hugetlb=1"]),  # re-executed once, with the tunable
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, ["start", "glibc.malloc.arena_max=2"]),  # the user's value wins
    ({"LATENT_VLA_MALLOC": "default"}, ["start", "None"]),  # switched off
])
def test_a_trainer_restarts_itself_with_huge_page_malloc(extra, expected):
    code = ("import os; print('start', flush=True); from core import cli; "
            "cli.run(lambda a: print(os.environ.get('GLIBC_TUNABLES')), [], trainer=True)")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LATENT_VLA_MALLOC")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected


def test_absl_records_from_tfds_are_dropped_ours_kept():
    quiet.silence_python()
    flt = next(f for f in logging.getLogger("absl").filters if isinstance(f, quiet.ThirdPartyFilter))

    def rec(path: str, level: int) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "msg", None, None)

    tfds_file = os.path.join(os.sep, "venv", "site-packages", "tensorflow_datasets", "core", "file_adapters.py")
    assert not flt.filter(rec(tfds_file, logging.WARNING))
    assert flt.filter(rec(tfds_file, logging.ERROR))  # real errors still show
    assert flt.filter(rec(str(ROOT / "lam" / "train.py"), logging.INFO))


def test_progress_bar_length_comes_from_the_config():
    assert _stages.total_steps(["python", "-m", "lam.train", "--config.train.total_steps=42"]) == 42
    from configs import lam as lam_configs

    want = lam_configs.get_config("lapa_demo").train.total_steps
    assert _stages.total_steps(["python", "-m", "lam.train", "--config=configs/lam.py:lapa_demo"]) == want
    assert _stages.total_steps(["python", "-m", "lam.evaluate", "--workdir=x"]) is None


def test_demo_data_stage_console(tmp_path):
    """The real first stage of `make demo` (tiny): TensorFlow + TFDS load and write, the console stays compact."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the demo's own defaults apply
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), "--data-only",
                        "--episodes", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    assert not [ln for ln in lines if BANNED.search(ln) or "WARNING" in ln], lines
    assert lines[0].startswith("[1/5] demo datasets: generating 2 episodes")
    assert re.match(r"  data done in \d+ s: robot \d+ ep / \d+ steps \(expert \d+%\), human", lines[1])
    assert any(ln.split()[:2] == ["data", "ran"] for ln in lines)
    assert len(lines) <= 8, lines
    assert (out / "index.html").is_file() and (out / "logs" / "data.log").is_file()


def test_every_demo_stage_has_a_headline(tmp_path):
    """The stages that used to show '-': a LAM training (its checkpoints dir; figures from the last usage record)
    and a LAPA fine-tune (held-out action-bin accuracy); hand-written records, expected text by hand."""
    lam = tmp_path / "lam"
    (lam / "checkpoints").mkdir(parents=True)
    records = [{"step": 25, "psnr": 20.0, "psnr_copy": 21.0, "perplexity": 3.0, "counts_since_reset": [[1] * 8]},
               {"step": 50, "psnr": 33.494, "psnr_copy": 33.2331, "perplexity": 6.9145,
                "counts_since_reset": [[1] * 8, [2] * 8]}]
    (lam / "codebook_usage.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert _stages.figures(str(lam / "checkpoints")) == \
        "step 50: train PSNR 33.49 dB vs copy-last 33.23 dB, perplexity 6.91 of 8"
    assert _stages.figures(str(tmp_path / "none" / "checkpoints")) == ""  # no usage record: no headline, no crash
    summary = {"train": {"loss_action_bins": {"first_10pct": 2.9979, "last_10pct": 1.1643}},
               "eval": {"acc_action_bins": 0.73893, "split": "val"}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert _stages.figures(str(tmp_path / "summary.json")) == \
        "held-out action-bin acc 0.739 (train loss 2.998 -> 1.164)"
