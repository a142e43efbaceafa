"""scripts/readme_results.py: the README's measured figures come from the run records, not from typing.

Covers the records' writers too: the test session's summary (tests/conftest.py, run here as a nested pytest
session) and `make demo`'s run record (scripts/demo.py `finish`)."""

import json
import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import readme_results  # noqa: E402

from core import machine  # noqa: E402
from core.errors import UserError  # noqa: E402

README = """# title

## Results

<!-- results:tests -->
| old | test | row |
<!-- /results:tests -->

text between

<!-- results:demo -->
<!-- /results:demo -->

| experiment | kept |
"""
T0 = 1796313197.6  # 2026-12-03 UTC
SNAP = {"time": T0, "cpu": "AMD EPYC", "cores": 2, "load": [0.44, 0.3, 0.1]}


def _write(path, obj) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def _records(tmp_path) -> tuple[str, str]:
    tests = _write(tmp_path / "tests.json", {
        "counts": {"passed": 580, "failed": 0, "error": 0, "skipped": 1, "deselected": 7}, "exit_status": 0,
        "markexpr": "not slow", "workers": 2, "seconds": 222.4, "revision": "a9648aa",
        "start": SNAP, "end": {**SNAP, "time": T0 + 222.4, "load": [2.46, 1.9, 1.0]}})
    demo = tmp_path / "demo"
    stages = [{"name": "data", "status": "reused", "seconds": 40.2, "headline": "robot 220 ep", "outputs": "x"},
              {"name": "vqgan", "status": "ran", "seconds": 612, "headline": "PSNR 30.1 dB | a pipe", "outputs": "y"},
              {"name": "lam_lapa", "status": "ran", "seconds": 512, "headline": "", "outputs": "z"}]
    _write(demo / "logs" / "run.json", {"argv": ["--out", "runs/demo"], "seconds": 3725, "revision": "abc1234",
                                         "stages": stages, "start": SNAP, "end": {**SNAP, "load": [2.0, 2.0, 2.0]}})
    return tests, str(demo)


def test_blocks_are_rewritten_from_the_records_and_the_rest_is_kept(tmp_path, capsys):
    tests, demo = _records(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert readme_results.main(["--readme", str(readme), "--tests", tests, "--demo", demo]) == 0
    text = readme.read_text()
    note = readme_results.NOTE
    assert text == README.replace("| old | test | row |\n", f"""{note}
| what | figure | measured |
|---|---|---|
| tests (`-m "not slow"`, 2 xdist workers) | 580 passed, 0 failed, 1 skipped; 3:42 of pytest (exit status 0) \
| 2026-12-03, AMD EPYC × 2 cores, load 0.44 → 2.46, rev a9648aa |
""").replace("<!-- results:demo -->\n", f"""<!-- results:demo -->
{note}
| stage | time | headline figure |
|---|---:|---|
| **whole run** (`scripts/demo.py --out runs/demo`) | 19:24 (sum of the stage times; 1 of 3 stages reused from \
earlier runs, this invocation took 1:02:05) | 2026-12-03, AMD EPYC × 2 cores, load 0.44 → 2.00, \
rev abc1234 |
| data (reused) | 0:40 | robot 220 ep |
| vqgan | 10:12 | PSNR 30.1 dB \\| a pipe |
| lam_lapa | 8:32 | – |
""")
    # a second run changes nothing; --check agrees, and notices a hand edit
    assert readme_results.main(["--readme", str(readme), "--tests", tests, "--demo", demo]) == 0
    assert readme.read_text() == text
    assert readme_results.main(["--readme", str(readme), "--tests", tests, "--demo", demo, "--check"]) == 0
    readme.write_text(text.replace("580 passed", "590 passed"))
    assert readme_results.main(["--readme", str(readme), "--tests", tests, "--demo", demo, "--check"]) == 1
    assert "out of date" in capsys.readouterr().out


def test_a_missing_source_leaves_its_block_alone(tmp_path):
    tests, _ = _records(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    readme_results.main(["--readme", str(readme), "--tests", tests, "--demo", str(tmp_path / "no_demo")])
    text = readme.read_text()
    assert "580 passed" in text and "<!-- results:demo -->\n<!-- /results:demo -->" in text
    with pytest.raises(UserError, match="no run records found"):
        readme_results.main(["--readme", str(readme), "--tests", str(tmp_path / "none.json"),
                             "--demo", str(tmp_path / "no_demo")])


def test_bad_readme_or_record_is_one_clear_error(tmp_path):
    tests, demo = _records(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README.replace("<!-- results:demo -->\n", ""))
    with pytest.raises(UserError, match=r"README has no '<!-- results:demo -->'"):
        readme_results.main(["--readme", str(readme), "--tests", tests, "--demo", demo])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        readme_results.main(["--readme", str(readme), "--tests", str(bad), "--demo", "-"])
    with open(os.path.join(demo, "logs", "run.json")) as f:
        run = json.load(f)
    _write(os.path.join(demo, "logs", "run.json"), {**run, "stages": ["vqgan"]})  # an older record: names only
    with pytest.raises(UserError, match="stages must be records with a name"):
        readme_results.main(["--readme", str(tmp_path / "README.md"), "--tests", "-", "--demo", demo])
    _write(bad, {"counts": {}})
    with pytest.raises(UserError, match="test summary lacks"):
        readme_results.main(["--readme", str(readme), "--tests", str(bad), "--demo", "-"])


def test_the_pytest_session_writes_its_summary(tmp_path):
    """A nested pytest session (one process) of one test of this file: the record conftest.py writes."""
    out = tmp_path / "last.json"
    env = {**os.environ, "LATENT_VLA_TEST_SUMMARY": str(out)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                        "tests/test_readme_results.py", "-k", "bad_readme_or_record"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rec = json.loads(out.read_text())
    # the record and the nested session's output in every message: this test failed twice without a trace (stop 30)
    seen = f"record {rec}\nstdout tail {r.stdout[-1500:]}"
    assert rec["counts"]["passed"] == 1 and rec["counts"]["failed"] == 0 and rec["counts"]["deselected"] == 5, seen
    assert rec["exit_status"] == 0 and rec["workers"] == 0, seen
    # a one-test session can take well under 0.1 s (stop 32's CI: 0.06 s, which the old 0.1-s rounding made 0.0 and
    # failed `0 < seconds`); the duration must agree with the snapshots' clock times (each rounded to 0.1 s)
    assert 0 <= rec["seconds"] < 300 and rec["end"]["time"] >= rec["start"]["time"], seen
    assert abs(rec["seconds"] - (rec["end"]["time"] - rec["start"]["time"])) <= 0.2, seen
    assert rec["start"]["cores"] == os.cpu_count() and len(rec["end"]["load"]) == 3, seen
    assert rec["start"]["isa"] == machine.cpu_isa(), seen
    assert "| tests (every tier, no xdist workers) | 1 passed, 0 failed;" in "\n".join(readme_results.tests_block(rec))
    assert rec["compile_cache_entries_at_start"] >= 0
    # the nested session compiles as this one does: conftest.py's default, or what the caller set
    assert rec["xla_most_optimizations_disabled"] is bool(jax.config.read("jax_disable_most_optimizations")), seen
    text = "\n".join(readme_results.tests_block({**rec, "compile_cache_entries_at_start": 0,
                                                  "xla_most_optimizations_disabled": True}))
    assert "(exit status 0, cold compilation cache, XLA optimizations mostly off)" in text
    off = {**rec, "xla_most_optimizations_disabled": False}
    assert "XLA optimizations on)" in "\n".join(readme_results.tests_block(off))
    old = {k: v for k, v in rec.items() if k != "xla_most_optimizations_disabled"}  # a record from before stop 63
    assert "XLA optimizations" not in "\n".join(readme_results.tests_block(old))


def test_demo_finish_writes_the_run_record(tmp_path, monkeypatch):
    import _stages
    import demo

    from core import machine

    out = tmp_path / "demo"
    os.makedirs(out / "logs")
    monkeypatch.setattr(_stages, "STAGES", [])
    _stages.record(_stages.StageRecord("vqgan", "ran", 61.0, "PSNR 29.00 dB", "vqgan"), str(out / "logs"))
    demo.finish(str(out), machine.snapshot(), ["--out", str(out), "--smoke", "2"])
    run = json.loads((out / "logs" / "run.json").read_text())
    assert run["argv"] == ["--out", str(out), "--smoke", "2"] and [s["name"] for s in run["stages"]] == ["vqgan"]
    rows = readme_results.demo_block(str(out))
    assert rows[3] == "| vqgan | 1:01 | PSNR 29.00 dB |"
    assert (out / "index.html").exists()


def test_the_machine_record_names_the_cpus_vector_extensions(tmp_path):
    """XLA compiles for the CPU it runs on (a seeded image BC trains other parameters under AVX than under AVX2), so
    the record names the vector extensions, and the README line the widest x86 one."""
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 avx fma avx512f\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert machine.cpu_isa(str(x86)) == ["sse4_2", "avx", "avx2", "fma", "avx512f"]  # ISA_FLAGS' order
    assert machine.cpu_isa(str(arm)) == ["asimd", "sve"] and machine.cpu_isa(str(tmp_path / "none")) == []
    assert machine.snapshot()["isa"] == machine.cpu_isa()
    snap = {**SNAP, "isa": ["sse4_2", "avx", "avx2", "fma"]}
    want = "2026-12-03, AMD EPYC (AVX2) × 2 cores, load 0.44 → 0.44, rev abc"
    assert readme_results._where(snap, snap, "abc") == want
    assert "AMD EPYC (AVX512F) × 2" in readme_results._where({**SNAP, "isa": ["avx2", "avx512f"]}, SNAP, "")
    assert "AMD EPYC × 2" in readme_results._where(SNAP, SNAP, "")  # an older record: no extensions, no bracket
