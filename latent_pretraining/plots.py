"""Training-curve plot of a VideoLLaMA run (matplotlib, Agg backend): per-head losses and accuracies over steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def plot_curves(rows: Sequence[dict[str, Any]], path: str, smooth: int = 10) -> None:
    """rows: [{"step": int, "loss_latent": float, "acc_latent": float, ...}] -> a two-panel PNG (moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = sorted({k for r in rows for k in r if k.startswith(("loss", "acc_"))})
    fig, (a_loss, a_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        steps, vals = map(np.asarray, zip(*pts, strict=True))
        k = max(1, min(smooth, len(vals) // 5))
        avg = np.convolve(vals, np.ones(k) / k, mode="valid")
        (a_acc if key.startswith("acc_") else a_loss).plot(steps[k - 1:], avg, label=key)
    a_loss.set_yscale("log")
    a_loss.set_title("losses (moving average)")
    a_acc.set_title("training accuracies (moving average)")
    for a in (a_loss, a_acc):
        a.set_xlabel("step")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
