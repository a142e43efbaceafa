"""Regenerates the measured part of the README's Results section from the last runs' own records.

Two blocks of README.md are written by this command, never by hand, each between its markers:

* `tests` — from `runs/tests/last.json`, which every pytest session writes at its end (`tests/conftest.py`):
  outcome counts, pytest wall time, workers, the machine (CPU model, cores) and the load average at start and end;
* `demo` — from a `make demo` run directory: `logs/run.json` (`scripts/demo.py`: total time, machine, load, and
  every stage's time and headline figure in the order the stages ran, the comparison's runs included).

A block whose source is missing is left as it is, so regenerating after `make test` alone keeps the demo figures.

    python scripts/readme_results.py                     # rewrite README.md from runs/tests and runs/demo
    python scripts/readme_results.py --check             # exit 1 if README.md is not what the records give
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from core.errors import UserError  # noqa: E402
from policy.compare_cost import clock  # noqa: E402

BLOCKS = ("tests", "demo")
NOTE = "<!-- written by scripts/readme_results.py from the run records; edit there, not here -->"


def _load(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except ValueError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); rerun the command that writes it") from e
    if not isinstance(d, dict):
        raise UserError(f"{what} {path} holds {type(d).__name__}, expected a JSON object")
    return d


def _where(start: dict, end: dict, revision: str) -> str:
    """'2026-12-03, AMD EPYC × 2 cores, load 0.44 → 2.46, rev a9648aa' (1-minute load averages); records that have
    the CPU's vector extensions name the widest of avx512f / avx2 / avx after the model ('AMD EPYC (AVX2)')."""
    day = datetime.datetime.fromtimestamp(float(start.get("time", 0)), datetime.UTC).strftime("%Y-%m-%d")
    load = lambda snap: f"{snap['load'][0]:.2f}" if snap.get("load") else "?"
    widest = next((x.upper() for x in ("avx512f", "avx2", "avx") if x in start.get("isa", ())), "")
    cpu = f"{start.get('cpu') or 'unknown CPU'}{f' ({widest})' if widest else ''} × {start.get('cores', '?')} cores"
    return f"{day}, {cpu}, load {load(start)} → {load(end)}" + (f", rev {revision}" if revision else "")


def tests_block(summary: dict) -> list[str]:
    """Markdown lines for a test session record (see tests/conftest.py `pytest_terminal_summary`)."""
    try:
        c, seconds = summary["counts"], float(summary["seconds"])
        start, end = summary["start"], summary["end"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"test summary lacks {e}; expected counts, seconds, start, end (tests/conftest.py)") from e
    outcome = ", ".join(f"{c.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped") if c.get(k, 0)
                        or k in ("passed", "failed"))
    tier = f"`-m \"{summary['markexpr']}\"`" if summary.get("markexpr") else "every tier"
    workers = summary.get("workers") or 0
    cache = summary.get("compile_cache_entries_at_start")
    cache = "" if cache is None else (f", warm compilation cache ({cache} entries)" if cache else
                                      ", cold compilation cache")
    # tests/conftest.py compiles with XLA's optimizations mostly off unless told otherwise (records from stop 63 on)
    opt = summary.get("xla_most_optimizations_disabled")
    cache += "" if opt is None else (", XLA optimizations mostly off" if opt else ", XLA optimizations on")
    return ["| what | figure | measured |", "|---|---|---|",
            f"| tests ({tier}, {workers or 'no'} xdist workers) | {outcome}; {clock(seconds)} of pytest "
            f"(exit status {summary.get('exit_status', '?')}{cache}) "
            f"| {_where(start, end, summary.get('revision', ''))} |"]


def demo_block(run_dir: str) -> list[str]:
    """Markdown lines for a `make demo` run: the total, then one row per stage (time, headline figure)."""
    logs = os.path.join(run_dir, "logs")
    run = _load(os.path.join(logs, "run.json"), "demo run record")
    stages = run.get("stages", [])
    for st in stages:
        if not isinstance(st, dict) or "name" not in st:
            raise UserError(f"{os.path.join(logs, 'run.json')}: stages must be records with a name, got {st!r}; "
                            "rerun `make demo` with this version")
    total = clock(float(run["seconds"]))
    reused = sum(st.get("status") == "reused" for st in stages)
    if reused:  # this invocation's own time would read as the pipeline's: give the stages' sum and say why
        total = (f"{clock(sum(float(st.get('seconds', 0)) for st in stages))} (sum of the stage times; {reused} of "
                 f"{len(stages)} stages reused from earlier runs, this invocation took {total})")
    rows = ["| stage | time | headline figure |", "|---|---:|---|",
            f"| **whole run** (`scripts/demo.py {' '.join(run.get('argv', []))}`) | {total} "
            f"| {_where(run['start'], run['end'], run.get('revision', ''))} |"]
    for st in stages:
        name = st["name"]
        status = "" if st.get("status") == "ran" else f" ({st.get('status')})"
        headline = str(st.get("headline") or "–").replace("|", "\\|")
        rows.append(f"| {name}{status} | {clock(float(st.get('seconds', 0)))} | {headline} |")
    return rows


def replace_block(text: str, name: str, lines: list[str]) -> str:
    """`text` with the lines between `<!-- results:NAME -->` and `<!-- /results:NAME -->` replaced."""
    pattern = re.compile(rf"(<!-- results:{name} -->\n)(.*?)(<!-- /results:{name} -->)", re.S)
    if not pattern.search(text):
        raise UserError(f"README has no '<!-- results:{name} -->' ... '<!-- /results:{name} -->' block; add the two "
                        "marker lines where the generated table belongs")
    body = "\n".join([NOTE, *lines]) + "\n"
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def regenerate(text: str, *, tests: str | None, demo: str | None) -> tuple[str, list[str]]:
    """(new README text, names of the blocks rewritten); a source that does not exist leaves its block alone."""
    done = []
    if tests and os.path.exists(tests):
        text = replace_block(text, "tests", tests_block(_load(tests, "test summary")))
        done.append("tests")
    if demo and os.path.exists(os.path.join(demo, "logs", "run.json")):
        text = replace_block(text, "demo", demo_block(demo))
        done.append("demo")
    return text, done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    p.add_argument("--tests", default=os.path.join(ROOT, "runs", "tests", "last.json"),
                   help="a test session record (tests/conftest.py writes it)")
    p.add_argument("--demo", default=os.path.join(ROOT, "runs", "demo"), help="a `make demo` run directory")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when README.md is out of date")
    a = p.parse_args(argv)
    with open(a.readme) as f:
        old = f.read()
    new, done = regenerate(old, tests=a.tests, demo=a.demo)
    if not done:
        raise UserError(f"no run records found: neither {a.tests} nor {os.path.join(a.demo, 'logs', 'run.json')} "
                        "exists; run `make test` or `make demo` first")
    if a.check:
        print(f"{a.readme}: {'up to date' if new == old else 'out of date'} ({', '.join(done)})")
        return 0 if new == old else 1
    if new != old:
        with open(a.readme, "w") as f:
            f.write(new)
    print(f"{a.readme}: {'rewrote' if new != old else 'unchanged'} the {' and '.join(done)} block(s)")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
