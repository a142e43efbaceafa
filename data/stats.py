"""Offline normalization statistics: one pass per dataset, written once, reused by every trainer.

    python -m data.stats --root /data/oxe --datasets fractal20220817_data,bridge_dataset@/other/root \\
        [--split train] [--stats-dir /data/oxe_stats] [--recompute] [--max-transitions 2000000]

On a large dataset the first trainer that opens it would otherwise compute the action/proprio statistics inline,
before its first step (and, on a pod, on every host at once). This command does that pass ahead of time with a
progress bar and writes the same JSON file the pipeline looks for (`data/normalization.py` `stats_path`: keyed by
dataset, split, feature spec and registry conventions), so a later run with the same `data.stats_dir` (default:
next to the dataset when writable, else ~/.cache/latent_vla/stats) reads it in milliseconds. Existing up-to-date
files are kept unless `--recompute`; a stale file (another feature spec) is recomputed. Entries use the mixture
syntax `name[:version][@root]`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from data import normalization, oxe, rlds
from data.mixture import DatasetHandle, check_mixture, parse_mixture, standardized


def _bar(total: int | None, name: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"stats {name}", unit="episode", dynamic_ncols=True, leave=False)


def compute_offline(root: str, datasets: str, *, split: str = "train", stats_dir: str | None = None,
                    recompute: bool = False, max_transitions: int = normalization.MAX_TRANSITIONS,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Writes (or finds up to date) the stats file of every entry; returns one record per dataset:
    {"dataset", "path", "cached": bool, "num_trajectories", "num_transitions", "seconds"}."""
    mixture = parse_mixture(datasets, name="stats")
    check_mixture(mixture, root)  # every missing/mismatched dataset at once, before any pass starts
    records = []
    for entry in mixture.entries:
        spec = oxe.get_spec(entry.name)
        opened = rlds.open_dataset(entry.root or root, entry.name, entry.version or spec.default_version)
        spec.select_layout(opened)
        resolved = rlds.resolve_split(opened, entry.split or split)
        handle = DatasetHandle(entry, spec, opened, resolved, {})
        path = normalization.stats_path(opened, spec, resolved, stats_dir)
        cached = not recompute and normalization.load_cached(opened, spec, resolved, stats_dir) is not None
        start = time.perf_counter()
        bar = None if cached else _bar(opened.splits.get(resolved.split("[")[0]), spec.name, progress)
        try:
            stats = normalization.load_or_compute(
                opened, spec, resolved, lambda h=handle, s=resolved: standardized(h, s, seed=None, shuffle_files=False),
                stats_dir, recompute=recompute, max_transitions=max_transitions,
                progress=None if bar is None else (lambda n, b=bar: b.update(1)))
        finally:
            if bar is not None:
                bar.close()
        records.append({"dataset": spec.name, "path": path, "cached": cached,
                        "num_trajectories": stats["num_trajectories"], "num_transitions": stats["num_transitions"],
                        "seconds": round(time.perf_counter() - start, 2)})
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="", help="common data root (entries may name their own with @root)")
    p.add_argument("--datasets", required=True, help="comma-separated entries name[:version][@root]")
    p.add_argument("--split", default="train", help="split the statistics are computed on (trainers use train)")
    p.add_argument("--stats-dir", default="", help="where to write; '' = next to each dataset (else ~/.cache)")
    p.add_argument("--recompute", action="store_true", help="recompute even when an up-to-date file exists")
    p.add_argument("--max-transitions", type=int, default=normalization.MAX_TRANSITIONS,
                   help="cap per dataset (the first N transitions in file order), as the inline pass does")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.max_transitions <= 0:
        p.error(f"--max-transitions must be positive, got {a.max_transitions}")
    records = compute_offline(a.root, a.datasets, split=a.split, stats_dir=a.stats_dir or None,
                              recompute=a.recompute, max_transitions=a.max_transitions, progress=not a.no_progress)
    for r in records:
        how = "up to date" if r["cached"] else f"computed in {r['seconds']:.1f} s"
        print(f"{r['dataset']}: {r['num_trajectories']} episodes, {r['num_transitions']} transitions, {how} -> "
              f"{r['path']}")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
