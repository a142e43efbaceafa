"""What a closed-loop evaluation reports: rate intervals, rollout media, the results table and the demos plot.

Split from ``policy/evaluate.py`` (which runs the episodes) so that the harness stays one job per file; the
comparison (``scripts/compare.py``) and the run report use these directly.

- ``wilson_interval(k, n)``: 95 % Wilson score interval of a success rate.
- ``bootstrap_ci(values)``: percentile bootstrap interval of a mean (progress; paired per-episode differences).
- ``write_rollout(frames, stem)``: an episode as an animated GIF, or a PNG filmstrip without PIL.
- ``format_table(results)``, ``plot_success_vs_demos(results, path)``: the markdown table and the plot of
  ``evaluate()`` results (one dict per policy, see ``policy.evaluate.evaluate``); ``plot_vs_demos`` plots any
  rate-like figure with its interval (the comparison's progress plot, policy/compare_report.py).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% for z = 1.96); (0, 1) when n = 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return lo, hi


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (episodes resampled with replacement).

    For paired comparisons pass the per-episode differences (same world seeds for both policies). A constant
    sample gives a zero-width interval; an empty one (nan, nan)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def write_png(path: str, rgb: np.ndarray) -> None:
    """Minimal dependency-free PNG writer for uint8[H, W, 3]."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _have_pil() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def write_rollout(frames: Sequence[np.ndarray], path_stem: str, fmt: str = "auto", fps: int = 10,
                  min_size: int = 128) -> str:
    """Writes an episode as an animated GIF (PIL) or, with fmt='png' or without PIL, a PNG filmstrip of at most 16
    frames. Frames are upscaled (nearest) to at least ``min_size`` px. Returns the path written."""
    scale = max(1, math.ceil(min_size / frames[0].shape[0]))
    big = [np.repeat(np.repeat(f, scale, 0), scale, 1) for f in frames]
    if fmt == "auto":
        fmt = "gif" if _have_pil() else "png"
    if fmt == "gif":
        from PIL import Image

        path = path_stem + ".gif"
        images = [Image.fromarray(f) for f in big]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    if fmt != "png":
        raise ValueError(f"unknown rollout format {fmt!r}: expected 'auto', 'gif' or 'png'")
    pick = np.unique(np.linspace(0, len(big) - 1, min(16, len(big))).round().astype(int))
    gap = np.full((big[0].shape[0], 2, 3), 255, np.uint8)
    strip = np.concatenate([x for i in pick for x in (big[i], gap)][:-1], axis=1)
    path = path_stem + ".png"
    write_png(path, strip)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _progress_cell(r: dict) -> str:
    if r.get("progress") is None:
        return "—"
    lo, hi = r.get("progress_ci95", (float("nan"), float("nan")))
    return f"{_pct(r['progress'])} [{_pct(lo)}, {_pct(hi)}]"


def format_table(results: list[dict]) -> str:
    """Markdown table: name, demos, success %, 95% CI, progress % with its bootstrap CI, one column per task family
    (success % / progress % and n)."""
    families = list(dict.fromkeys(f for r in results for f in r.get("per_family", {})))  # first-seen order
    head = ["name", "demos", "success %", "95% CI", "progress % [95% CI]", *families]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in results:
        lo, hi = r["ci95"]
        demos = r.get("demos")
        row = [str(r.get("name", "?")), "—" if demos is None else str(demos),
               f"{_pct(r['success_rate'])} ({r['successes']}/{r['episodes']})", f"[{_pct(lo)}, {_pct(hi)}]",
               _progress_cell(r)]
        for f in families:
            fam = r.get("per_family", {}).get(f)
            row.append("—" if fam is None else f"{_pct(fam['rate'])} / {_progress_cell(fam)} (n={fam['n']})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_success_vs_demos(results: list[dict], path: str, title: str = "Closed-loop success vs. labelled demos") -> str:
    """Success rate (with 95% Wilson error bars) vs. number of demos, one line per recipe: ``plot_vs_demos``."""
    return plot_vs_demos(results, path, title=title)


def plot_vs_demos(results: list[dict], path: str, *, value: str = "success_rate", ci: str = "ci95",
                  ylabel: str = "success rate (95% CI)", title: str = "Closed-loop success vs. labelled demos") -> str:
    """``results[value]`` with its interval ``results[ci]`` = (lo, hi) vs. number of demos, one line per ``label``
    (else ``recipe``, else ``name``); results without ``demos`` are skipped. Values are in [0, 1]. Writes ``path``
    (format from its extension) with matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("demos") is not None:
            groups.setdefault(str(r.get("label") or r.get("recipe") or r.get("name")), []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    xs_all = [float(r["demos"]) for rs in groups.values() for r in rs]
    log = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 4
    span = (max(xs_all) - min(xs_all)) if xs_all else 0.0
    for g, (label, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: float(r["demos"]))
        x = np.array([float(r["demos"]) for r in rs])
        dodge = 0.02 * (g - (len(groups) - 1) / 2)  # side by side, so overlapping error bars stay readable
        x = x * (1 + dodge) if log else x + dodge * (span or 0.25 * (x[0] or 1.0))
        y = np.array([r[value] for r in rs])
        err = np.array([[max(0.0, yi - r[ci][0]) for yi, r in zip(y, rs, strict=True)],
                        [max(0.0, r[ci][1] - yi) for yi, r in zip(y, rs, strict=True)]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    if log:
        ax.set_xscale("log")
        ax.minorticks_off()
    if xs_all and not span:  # one demo count: a fixed window, so the dodged points stay near their tick
        ax.set_xlim(xs_all[0] * 0.8 - 0.5, xs_all[0] * 1.2 + 0.5)
    if xs_all:
        ticks = sorted(set(xs_all))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("labelled demos")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
