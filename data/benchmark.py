"""Input-pipeline benchmark: samples/s, decoded frames/s, peak RSS, first-batch and resume latency.

    python scripts/benchmark.py data --data-root DIR --mixture demo --window vipra --batch-size 64 --resolution 64
`--mixture` takes a name (resolved by the caller, e.g. configs.mixtures) or an inline spec "demo_robot=1,demo_human=1".
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any

from data.augment import AugmentConfig
from data.loader import make_iterator
from data.mixture import Mixture, MixtureEntry, PipelineConfig
from data.windows import WindowSpec, lam_window, lapa_window, vipra_window

WINDOWS: dict[str, Callable[..., WindowSpec]] = {
    "vipra": vipra_window, "lapa": lapa_window, "lam": lam_window,
    "policy": lambda: WindowSpec(kind="policy", history_offsets=(-2, 0), horizon=14),
}


def parse_inline_mixture(text: str) -> Mixture:
    """'a=1,b:1.0.0=0.5' -> Mixture (name[:version]=weight, weight defaults to 1)."""
    entries = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        name, _, version = name.partition(":")
        entries.append(MixtureEntry(name, float(weight or 1.0), version or None))
    return Mixture(text, tuple(entries))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run(mixture: Mixture, cfg: PipelineConfig, *, batches: int = 50, warmup: int = 5,
        resume_at: int = 0) -> dict[str, Any]:
    """Times `batches` batches after `warmup`; optionally times a restore at batch `resume_at`."""
    base_rss = current_rss_mb()
    t0 = time.perf_counter()
    it = make_iterator(mixture, cfg, process_index=0, process_count=1)
    t_open = time.perf_counter() - t0
    next(it)
    t_first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t1
    samples = batches * cfg.global_batch_size
    out: dict[str, Any] = {
        "mixture": mixture.name, "window": cfg.window.kind, "batch_size": cfg.global_batch_size,
        "resolution": cfg.resolution, "batches": batches, "samples_per_s": samples / dt,
        "batches_per_s": batches / dt, "decoded_frames_per_s": samples * cfg.window.images_per_sample() / dt,
        "open_s": t_open, "first_batch_s": t_first, "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base_rss,
    }
    if resume_at:
        it2 = make_iterator(mixture, cfg, process_index=0, process_count=1)
        it2.set_state({**it.get_state(), "batches_consumed": resume_at})
        t2 = time.perf_counter()
        next(it2)
        out["resume_at"] = resume_at
        out["resume_first_batch_s"] = time.perf_counter() - t2
        out["peak_rss_with_resume_mb"] = peak_rss_mb()  # two pipelines alive at once
    return out


def main(argv: list[str] | None = None, resolve_mixture: Callable[[str], Mixture] | None = None) -> int:
    """CLI; prints one human line and one JSON line."""
    p = argparse.ArgumentParser(prog="benchmark.py data", description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--mixture", default="demo")
    p.add_argument("--window", choices=sorted(WINDOWS), default="vipra")
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--shuffle-buffer", type=int, default=10_000)
    p.add_argument("--read-parallelism", type=int, default=4)
    p.add_argument("--decode-parallelism", type=int, default=2)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--nondeterministic", action="store_true")
    p.add_argument("--stats-dir", default=None)
    p.add_argument("--resume-at", type=int, default=0, help="also time a restore at this batch count")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if "=" in a.mixture or "," in a.mixture or resolve_mixture is None:
        mixture = parse_inline_mixture(a.mixture)
    else:
        mixture = resolve_mixture(a.mixture)
    window = lam_window(clip_len=a.clip_len) if a.window == "lam" else WINDOWS[a.window]()
    cfg = PipelineConfig(data_root=a.data_root, window=window, global_batch_size=a.batch_size,
                         resolution=a.resolution, wrist_resolution=a.resolution, seed=a.seed,
                         deterministic=not a.nondeterministic, shuffle_buffer=a.shuffle_buffer,
                         augment=AugmentConfig() if a.augment else None, stats_dir=a.stats_dir,
                         read_parallelism=a.read_parallelism, decode_parallelism=a.decode_parallelism)
    r = run(mixture, cfg, batches=a.batches, warmup=a.warmup, resume_at=a.resume_at)
    resume = f", resume@{a.resume_at}: {r['resume_first_batch_s']:.1f}s" if a.resume_at else ""
    print(f"[data] {r['mixture']} {a.window} B={r['batch_size']} {r['resolution']}px: "
          f"{r['samples_per_s']:.1f} samples/s, {r['decoded_frames_per_s']:.1f} decoded frames/s, "
          f"{r['batches_per_s']:.2f} batches/s, first batch {r['first_batch_s']:.1f}s, "
          f"peak RSS {r['peak_rss_mb']:.0f} MiB (before the pipeline {r['rss_before_mb']:.0f}){resume}")
    print(json.dumps(r))
    return 0
