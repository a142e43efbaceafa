"""Flow-target check: how well each host flow estimator reproduces a dataset's true motion, before a LAM trains.

    python -m lam.flow_check --config=configs/lam.py:lapa_cluttered --config.data.root=DIR [--clips=512] [--seed=0]
    python -m lam.flow_check --config=configs/lam.py:lapa_metaworld --config.data.root=DIR --radius=6

Draws `clips` training clips the way the LAM trainer does (the config's datasets, weights, clip length, frame offset,
resolution; `lam/data.py` ClipSampler with the given seed) from a dataset that records the effector's pixel track
(the demo world, Meta-World), estimates each consecutive pair's flow with every estimator of `lam/flow_targets.py`
ESTIMATORS (its settings from the config's loss block, loss.farneback_* / loss.block_match_*), and compares it with
the truth as the flow loss reads it (with `model.stabilize`, each pair's median removed, i.e. relative to the camera).

Against the effector track (every dataset with effector ground truth; Meta-World records no flow):

    track_dir                 share of moving pairs (the true effector displacement >= eval.min_motion px, the
                              direction probe's floor) whose mean estimate over the disc of `radius` px around the
                              effector's first-frame position falls in the same 45° sector as that displacement
    track_speed               median ratio of that mean's length to the true displacement's (static pixels inside
                              the disc pull it below 1 even for a perfect estimate)
    track_pairs               moving pairs scored

Against the recorded per-step flow (the demo world only; "—" elsewhere):

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


def compare_track(est: np.ndarray, disp: np.ndarray, effector: np.ndarray, min_motion: float = 1.0,
                  radius: float = EFFECTOR_RADIUS) -> dict[str, float]:
    """est float[N, R, R, 2] (as the loss reads it), disp float[N, 2] the effector's true displacement (px) over each
    pair, effector float[N, 2] its pixel position (x, y) at the pair's first frame → track_dir / track_speed /
    track_pairs of the module docstring."""
    r = est.shape[1]
    yy, xx = np.mgrid[:r, :r] + 0.5
    near = np.hypot(xx[None] - effector[:, 0, None, None], yy[None] - effector[:, 1, None, None]) < radius
    inside = near.sum((1, 2))
    moving = (np.linalg.norm(disp, axis=-1) >= min_motion) & (inside > 0)
    if not moving.any():
        return {"track_dir": float("nan"), "track_speed": float("nan"), "track_pairs": 0}
    mean = (est * near[..., None]).sum((1, 2))[moving] / inside[moving][:, None]
    true = disp[moving]
    return {"track_dir": float((direction_bins(mean) == direction_bins(true)).mean()),
            "track_speed": float(np.median(np.linalg.norm(mean, axis=-1) / np.linalg.norm(true, axis=-1))),
            "track_pairs": int(moving.sum())}


def compare(est: np.ndarray, truth: np.ndarray, effector: np.ndarray) -> dict[str, float]:
    """est, truth float[N, R, R, 2] (as the loss reads them), effector float[N, 2] pixels (x, y) at the first frame →
    the module docstring's metrics (without timing)."""
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


def check(config: Any, clips: int = 512, seed: int = 0,
          radius: float = EFFECTOR_RADIUS) -> dict[str, dict[str, float]]:
    """Metrics per estimator name on `clips` training clips of config.data: the track metrics always, the flow
    metrics (and true_px, the true moving pixels per pair) where the datasets record flow."""
    d = config.data
    with_flow = lam_data.records_flow(d.root, d.datasets, d.train_split, str(d.camera))
    table = lam_data.load_table(d.root, d.datasets, d.train_split, with_flow=with_flow,
                                max_episodes=d.max_episodes or None, cache_dir=d.cache_dir,
                                resolution=int(config.model.image_size), camera=str(d.camera))
    if not table.has_ground_truth:
        raise ValueError(f"{d.datasets} under {d.root} record no effector ground truth: the check needs an effector "
                         "track (the demo world, Meta-World)")
    batch = next(lam_data.ClipSampler(table, batch_size=clips, clip_len=d.clip_len, offset=d.offset, seed=seed,
                                      weights=d.weights, with_flow=with_flow))
    clip, n = batch["clip"], d.clip_len - 1
    as_loss = relative if config.model.stabilize else (lambda f: f)
    effector = batch["effector"][:, :-1].reshape(-1, 2)
    disp = (batch["effector"][:, 1:] - batch["effector"][:, :-1]).reshape(-1, 2)
    truth = as_loss(batch["flow"].reshape(-1, *batch["flow"].shape[2:])) if with_flow else None
    out = {}
    for name in ESTIMATORS:
        loss = config.loss.copy_and_resolve_references()
        loss.flow_target = name
        fn = estimator(loss)
        t0 = time.process_time()
        est = np.stack([fn(clip[i, t], clip[i, t + 1]) for i in range(len(clip)) for t in range(n)])
        ms = (time.process_time() - t0) / len(est) * 1e3
        est = as_loss(est)
        flow = compare(est, truth, effector) if with_flow else {}
        out[name] = {**compare_track(est, disp, effector, float(config.eval.min_motion), radius), **flow,
                     "ms_per_pair": ms}
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of `check`'s results ("—" for the flow metrics where the data record no flow)."""
    cols = ("track_dir", "track_speed", "epe_moving", "epe_static", "marked_px", "iou", "recall", "effector_dir",
            "effector_speed", "ms_per_pair")
    first = next(iter(results.values()))
    cell = lambda v, c: f"{v[c]:.2f}" if c in v else "—"
    lines = [f"| estimator | {' | '.join(cols)} |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {k} | " + " | ".join(cell(v, c) for c in cols) + " |" for k, v in results.items()]
    foot = f"moving pairs scored on the track: {first['track_pairs']}"
    if "true_px" in first:
        foot += f"; true moving px per pair: {first['true_px']:.0f}"
    return "\n".join(lines) + "\n\n" + foot


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    print(table(check(f.config, clips=f.clips, seed=f.seed, radius=f.radius)))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from core import cli

    config_flags.DEFINE_config_file("config", None, "LAM config, e.g. configs/lam.py:lapa_cluttered",
                                    lock_config=False)
    flags.DEFINE_integer("clips", 512, "Training clips to draw.")
    flags.DEFINE_integer("seed", 0, "Sampler seed of the clips.")
    flags.DEFINE_float("radius", EFFECTOR_RADIUS, "Pixels around the effector centre averaged for the track metrics.")
    cli.run_absl(main)
