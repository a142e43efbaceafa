"""What a comparison cost to run: the measured time of each of its runs, for the report's "Cost" section.

`scripts/compare.py` runs every policy as two stages, its training (`<run>`) and its closed-loop evaluation
(`<run>.test`), and each leaves OUT/logs/<stage>.stage.json (scripts/_stages.py) with the wall seconds it took and,
since the records keep it, the CPU seconds of its process tree. A reused stage keeps the times of the session that
ran it, so a grid filled over several sessions still sums to what its runs cost. Pretraining (the LAMs and
VideoLLaMA runs a recipe starts from, `make demo`'s stages) is outside the grid and not counted here.

Example: a group of three ViPRA runs whose trainings took 450, 470 and 490 s and whose evaluations took 100 s each
gives the row `| vipra (robot+human) | 100 | 3 | 7:50 (7:30–8:10) | 1:40 | 28:30 | ... |`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class StageTime:
    """One stage's record: wall seconds and CPU seconds (None where the record has no CPU time)."""

    wall: float
    cpu: float | None


def stage_time(logs: str, stage: str) -> StageTime | None:
    """The times in LOGS/<stage>.stage.json; None when the stage has no readable record (e.g. a run evaluated in
    another directory, or a record without its wall time)."""
    try:
        with open(os.path.join(logs, f"{stage}.stage.json")) as f:
            d = json.load(f)
        wall = float(d["seconds"])
        cpu = d.get("cpu_seconds")
        return StageTime(wall, None if cpu is None else float(cpu))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clock(seconds: float) -> str:
    """H:MM:SS (or M:SS under an hour): 95.4 -> '1:35', 3725 -> '1:02:05'."""
    h, rest = divmod(round(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _mean_range(values: Sequence[float]) -> str:
    if not values:
        return "—"
    mean = clock(sum(values) / len(values))
    return mean if len(values) == 1 or max(values) - min(values) < 1 else \
        f"{mean} ({clock(min(values))}–{clock(max(values))})"


def cost_section(out: str, groups: Sequence[tuple[str, int, Sequence[str]]], left: str = "") -> list[str]:
    """The report's "## Cost" lines: one row per (policy label, demos, run names), then the grid's totals and `left`
    (what is still to run, e.g. "about 2:10:00 left for 12 runs (...)"), when given.

    Wall times are each stage's own; CPU totals cover only the stages whose records have CPU time (the row says how
    many). Returns [] when no run has a record (a report built from runs made elsewhere)."""
    logs = os.path.join(out, "logs")
    rows, walls, cpus, n_cpu, n_stages, missing = [], {"train": 0.0, "test": 0.0}, 0.0, 0, 0, 0
    for name, demos, runs in groups:
        train = [stage_time(logs, r) for r in runs]
        test = [stage_time(logs, r + ".test") for r in runs]
        found = [t for t in train + test if t is not None]
        missing += sum(t is None for t in train + test)
        if not found:
            continue
        walls["train"] += sum(t.wall for t in train if t is not None)
        walls["test"] += sum(t.wall for t in test if t is not None)
        with_cpu = [t.cpu for t in found if t.cpu is not None]
        cpus, n_cpu, n_stages = cpus + sum(with_cpu), n_cpu + len(with_cpu), n_stages + len(found)
        rows.append([name, str(demos), str(len(runs)), _mean_range([t.wall for t in train if t is not None]),
                     _mean_range([t.wall for t in test if t is not None]), clock(sum(t.wall for t in found)),
                     f"{clock(sum(with_cpu))} ({len(with_cpu)} of {len(found)})" if with_cpu else "—"])
    if not rows:
        return []
    head = ["policy", "demos", "runs", "training, wall per run (range)", "evaluation, wall per run",
            "total wall", "total CPU (stages with it)"]
    lines = ["## Cost", "",
             "Measured when each run ran (a reused run keeps its first session's times; logs/*.stage.json). "
             "Pretraining is not included.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), ""]
    total = walls["train"] + walls["test"]
    lines.append(f"All runs above: {clock(total)} of wall time (training {clock(walls['train'])}, evaluation "
                 f"{clock(walls['test'])})" + (f"; {clock(cpus)} of CPU time over the {n_cpu} of {n_stages} stages "
                                               "that recorded it" if n_cpu else "; no stage recorded its CPU time")
                 + (f"; {missing} stage(s) without a record" if missing else "") + ".")
    if left:
        lines += ["", f"Still to run in this grid: {left}."]
    return [*lines, ""]
