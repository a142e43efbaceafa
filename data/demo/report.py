"""Human-readable summaries of generated demo datasets."""

from __future__ import annotations


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_summaries(summaries: list[dict]) -> str:
    """A small table: dataset, episodes, steps, expert success rate, time taken, size on disk, path."""
    rows = [("dataset", "episodes", "steps", "expert success", "time", "size", "path")]
    for s in summaries:
        rows.append((s["dataset"], str(s["episodes"]), str(s["steps"]), f"{100 * s['success_rate']:.1f}%",
                     f"{s['seconds']:.1f} s", _size(s["bytes"]), s["path"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
