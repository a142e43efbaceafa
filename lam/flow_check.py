"""Flow-target check: how well each host flow estimator reproduces a dataset's ground-truth flow, before a LAM trains.

    python -m lam.flow_check --config=configs/lam.py:lapa_cluttered --config.data.root=DIR [--clips=512] [--seed=0]

Draws `clips` training clips the way the LAM trainer does (the config's datasets, weights, clip length, frame offset,
resolution; `lam/data.py` ClipSampler with the given seed) from a dataset that records per-step optical flow (the
demo world), estimates each consecutive pair's flow with every estimator of `lam/flow_targets.py` ESTIMATORS (its
settings from the config's loss block, loss.farneback_* / loss.block_match_*), and compares it with the recorded flow
as the flow loss reads it with `model.stabilize` (each pair's median removed, i.e. relative to the camera):

    epe_moving / epe_static   end-point error (px) on pixels whose true flow is > 0.5 px / the rest
    marked_px                 pixels per pair the estimate calls moving (> 0.5 px; the loss's moving weight lands there)
    iou / recall              of that mask against the true one
    effector_dir              share of pairs whose mean estimate on the effector (true movers within
                              `EFFECTOR_RADIUS` px of its centre) falls in the same 45° sector as the truth's, the
                              8 sectors of lam.evaluate's direction probe (what a LAM's codes are probed for)
    effector_speed            median ratio of the estimated to the true effector displacement length
    ms_per_pair               CPU milliseconds per pair on this host (one thread)

Only training-split clips are read, so settings chosen with it never look at evaluation episodes. Prints one
Markdown table row per estimator.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lam import data as lam_data
from lam.evaluate import direction_bins
from lam.flow_targets import ESTIMATORS, estimator

EFFECTOR_RADIUS = 4.5  # px around the effector centre counted as the effector (demo: a ~5 px disc)
MOVING_PX = 0.5  # the flow loss's moving threshold (lam/losses.py flow_loss moving_threshold)


def relative(flow: np.ndarray) -> np.ndarray:
    """flow float[N, R, R, 2] minus each pair's median: motion relative to the camera (stabilize.compensate_flow)."""
    return flow - np.median(flow, axis=(1, 2), keepdims=True)


def compare(est: np.ndarray, truth: np.ndarray, effector: np.ndarray) -> dict[str, float]:
    """est, truth float[N, R, R, 2] (camera-relative), effector float[N, 2] pixels (x, y) at the first frame → the
    module docstring's metrics (without timing)."""
    r = truth.shape[1]
    err = np.linalg.norm(est - truth, axis=-1)
    true_mov = np.linalg.norm(truth, axis=-1) > MOVING_PX
    est_mov = np.linalg.norm(est, axis=-1) > MOVING_PX
    yy, xx = np.mgrid[:r, :r] + 0.5
    near = np.hypot(xx[None] - effector[:, 0, None, None], yy[None] - effector[:, 1, None, None]) < EFFECTOR_RADIUS
    eff = near & true_mov
    has = eff.sum((1, 2)) > 0
    mean_on = lambda f: (f * eff[..., None]).sum((1, 2))[has] / eff.sum((1, 2))[has][:, None]
    t_eff, e_eff = mean_on(truth), mean_on(est)
    return {
        "epe_moving": float(err[true_mov].mean()) if true_mov.any() else float("nan"),
        "epe_static": float(err[~true_mov].mean()),
        "marked_px": float(est_mov.sum((1, 2)).mean()), "true_px": float(true_mov.sum((1, 2)).mean()),
        "iou": float((est_mov & true_mov).sum() / max((est_mov | true_mov).sum(), 1)),
        "recall": float((est_mov & true_mov).sum() / max(true_mov.sum(), 1)),
        "effector_dir": float((direction_bins(e_eff) == direction_bins(t_eff)).mean()) if has.any() else float("nan"),
        "effector_speed": float(np.median(np.linalg.norm(e_eff, axis=-1) / np.linalg.norm(t_eff, axis=-1)))
        if has.any() else float("nan"),
        "pairs_with_effector": int(has.sum()),
    }


def check(config: Any, clips: int = 512, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metrics per estimator name on `clips` training clips of config.data (each dict also carries true_px, the
    true moving pixels per pair, the same for every estimator)."""
    d = config.data
    table = lam_data.load_table(d.root, d.datasets, d.train_split, with_flow=True,
                                max_episodes=d.max_episodes or None, cache_dir=d.cache_dir,
                                resolution=int(config.model.image_size), camera=str(d.camera))
    if not table.has_ground_truth:
        raise ValueError(f"{d.datasets} under {d.root} record no effector ground truth: the check needs the demo "
                         "world's recorded flow and effector (data/demo)")
    batch = next(lam_data.ClipSampler(table, batch_size=clips, clip_len=d.clip_len, offset=d.offset, seed=seed,
                                      weights=d.weights, with_flow=True))
    clip, n = batch["clip"], d.clip_len - 1
    truth = relative(batch["flow"].reshape(-1, *batch["flow"].shape[2:]))
    effector = batch["effector"][:, :-1].reshape(-1, 2)
    out = {}
    for name in ESTIMATORS:
        loss = config.loss.copy_and_resolve_references()
        loss.flow_target = name
        fn = estimator(loss)
        t0 = time.process_time()
        est = np.stack([fn(clip[i, t], clip[i, t + 1]) for i in range(len(clip)) for t in range(n)])
        ms = (time.process_time() - t0) / len(est) * 1e3
        out[name] = {**compare(relative(est), truth, effector), "ms_per_pair": ms}
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of `check`'s results."""
    cols = ("epe_moving", "epe_static", "marked_px", "iou", "recall", "effector_dir", "effector_speed", "ms_per_pair")
    true_px = next(iter(results.values()))["true_px"]
    lines = [f"| estimator | {' | '.join(cols)} |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {k} | " + " | ".join(f"{v[c]:.2f}" for c in cols) + " |" for k, v in results.items()]
    return "\n".join(lines) + f"\n\ntrue moving px per pair: {true_px:.0f}"


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    print(table(check(f.config, clips=f.clips, seed=f.seed)))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from core import cli

    config_flags.DEFINE_config_file("config", None, "LAM config, e.g. configs/lam.py:lapa_cluttered",
                                    lock_config=False)
    flags.DEFINE_integer("clips", 512, "Training clips to draw.")
    flags.DEFINE_integer("seed", 0, "Sampler seed of the clips.")
    cli.run_absl(main)
