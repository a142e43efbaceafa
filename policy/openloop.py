"""Open-loop agreement of a policy with expert demonstrations it did not train on.

    python -m policy.openloop --checkpoint runs/policy/lapa --data /data/demo --dataset demo_robot \
        --split "train[200:220]" [--bin-temperature 1] [--out openloop.json]

Every step of every episode is one query, exactly as closed-loop evaluation queries (the history frames at the
policy's offsets, clamped at the episode start; the instruction; the dataset's proprio when the policy takes the
state), and the first action of the returned chunk is compared with the expert's action at that step. Closed-loop
success mixes what a policy predicts with where its own mistakes take it; this separates the first: a policy that
has memorised its demos agrees with the expert on its training episodes and not on new ones.

Figures (`agreement`), over the action dimensions in which the expert moves (varies across the read steps; the
gripper, index 6 of the standardized 7-D action, is left out):
- `cosine`: mean cosine between predicted and expert action vectors, over steps where the expert moves (norm above
  a tenth of its largest); 1 = same direction, 0 = unrelated;
- `unexplained`: mean squared error / the expert actions' variance (0 = exact, 1 = no better than their mean);
- `speed_ratio`: mean predicted norm / mean expert norm;
- per dimension, how often the prediction sits (within 1 % of that magnitude) at the expert's largest magnitude
  (`at_limit`) or at 0 (`at_zero`),
  beside the expert's own rates: a discrete head decoded by argmax falls back on such often-repeated values when
  it is unsure (docs/comparison_log.md, "Why the LAPA layout is flat in N").

Episodes are read with `data/episodes.py` (the registry's standardization, the pipeline's conventions). The report
says how many of them the policy trained on, matched by episode id against its own training split (so another root
with other episodes, e.g. a fresh generation seed, counts 0 however its split is named).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import UserError
from core.jsonable import write_json
from policy.evaluate import history_indices

GRIPPER_DIM = 6
MOVING = 0.1  # a step counts for `cosine` when the expert's action norm is above this fraction of its largest


def agreement(pred: np.ndarray, expert: np.ndarray, dims: Sequence[int] | None = None,
              episode: np.ndarray | None = None, resamples: int = 2000) -> dict[str, Any]:
    """Agreement figures (module docstring) of predicted vs expert actions f32[N, A] (rows paired).

    dims: the dimensions compared (default: those where the expert varies, the gripper excluded). episode: int[N],
    each row's episode: `cosine_ci95` resamples whole episodes (steps of one episode are not independent)."""
    p, e = np.asarray(pred, np.float64), np.asarray(expert, np.float64)
    if p.shape != e.shape or p.ndim != 2 or not len(p):
        raise UserError(f"pred and expert must be the same non-empty [N, A] shape, got {p.shape} and {e.shape}")
    if dims is None:
        dims = [d for d in range(e.shape[1]) if d != GRIPPER_DIM and np.ptp(e[:, d]) > 1e-8]
    dims = list(dims)
    if not dims:
        raise UserError("the expert actions do not vary in any dimension: nothing to compare")
    p, e = p[:, dims], e[:, dims]
    pn, en = np.linalg.norm(p, axis=1), np.linalg.norm(e, axis=1)
    moving = en > MOVING * en.max()
    cos = np.sum(p * e, axis=1)[moving] / np.maximum(pn[moving] * en[moving], 1e-12)
    ci = [float("nan")] * 2
    if episode is not None and len(cos):
        ep = np.asarray(episode)[moving]
        ids = np.unique(ep)
        sums = np.array([cos[ep == i].sum() for i in ids])
        counts = np.array([(ep == i).sum() for i in ids])
        pick = np.random.default_rng(0).integers(0, len(ids), (resamples, len(ids)))
        ci = [float(q) for q in np.quantile(sums[pick].sum(1) / counts[pick].sum(1), [0.025, 0.975])]
    var = float(np.mean(np.var(e, axis=0)))
    limit = np.abs(e).max(axis=0)

    def at(x: np.ndarray, value: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in np.mean(np.abs(np.abs(x) - value) <= 1e-2 * limit, axis=0)]

    return {"steps": len(p), "dims": dims, "moving_steps": int(moving.sum()),
            "cosine": float(cos.mean()) if len(cos) else float("nan"), "cosine_ci95": ci,
            "unexplained": float(np.mean((p - e) ** 2) / var) if var > 0 else float("nan"),
            "speed_ratio": float(pn.mean() / max(en.mean(), 1e-12)),
            "at_limit": at(p, limit), "expert_at_limit": at(e, limit),
            "at_zero": at(p, 0 * limit), "expert_at_zero": at(e, 0 * limit)}


def training_overlap(episodes: Sequence[Any], data_root: str, dataset: str, config: Any) -> int | None:
    """How many of `episodes` (read from `dataset` under `data_root`) are among the policy's own training episodes:
    its `config.data` split (`train_split`, e.g. 'train[:100]') of the same dataset, read again (not decoded) from
    the root it trained on. Episodes match by the dataset's own episode id (the demo world's is the episode's world
    seed, so two generation seeds never match by accident), or by TFDS id when the dataset has none and both roots
    are the same directory. 0 when the policy did not train on `dataset`; None when its training data cannot be read
    or carries no id to match by."""
    from data.episodes import iter_episodes, parse_sources

    data = config.get("data")
    if data is None:
        return None
    try:
        sources = [s for s in parse_sources(data.root, tuple(data.datasets), data.train_split) if s.name == dataset]
        if not sources:
            return 0
        train = [e for s in sources for e in iter_episodes(s, 0, decode=False)]
    except (UserError, OSError):
        return None
    if all(e.source_id for e in episodes) and all(e.source_id for e in train):
        seen = {e.source_id for e in train}
        return sum(e.source_id in seen for e in episodes)
    if all(os.path.realpath(s.root) == os.path.realpath(data_root) for s in sources):
        seen = {e.tfds_id for e in train}
        return sum(e.tfds_id in seen for e in episodes)
    return None


def rollout_pairs(policy: Any, episodes: Sequence[Any], *, batch: int = 16
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted first actions f32[N, A], expert actions f32[N, A], episode index int[N]) over every step of
    `episodes` (data.episodes.Episode: frames uint8[T, R, R, 3], action f32[T, 7], proprio f32[T, 8], language)."""
    meta = policy.metadata()
    offsets, stride = meta["history_offsets"], int(meta.get("frame_stride") or 1)
    state = bool(meta.get("proprio_dim"))
    steps = [(k, t) for k, ep in enumerate(episodes) for t in range(len(ep.action))]
    preds = []
    for i in range(0, len(steps), batch):  # a fixed batch (the last one padded): one compilation
        rows = [steps[min(j, len(steps) - 1)] for j in range(i, i + batch)]
        frames = np.stack([episodes[k].frames[history_indices(t, offsets, stride)] for k, t in rows])
        kw = {"proprio": np.stack([episodes[k].proprio[t] for k, t in rows])} if state else {}
        out = policy.act(frames, [episodes[k].language for k, _ in rows], seed=i // batch, **kw)
        preds.append(np.asarray(out)[: len(steps) - i, 0])
    expert = np.stack([episodes[k].action[t] for k, t in steps])
    which = np.asarray([k for k, _ in steps])
    return np.concatenate(preds).astype(np.float32), expert.astype(np.float32), which


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="fine-tuning run dir (policy.policy.Policy.from_checkpoint)")
    p.add_argument("--data", required=True, help="data root holding <dataset>/<version>")
    p.add_argument("--dataset", default="demo_robot")
    p.add_argument("--split", default="val", help="TFDS split, e.g. val or 'train[200:220]' (default: val)")
    p.add_argument("--episodes", type=int, default=100, help="at most this many episodes (default 100)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--bin-temperature", type=float, default=0.0, help="action-bin policies: 0 = argmax (default)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    from data.episodes import EpisodeSource, iter_episodes
    from policy.policy import Policy

    policy = Policy.from_checkpoint(args.checkpoint, args.step, bin_temperature=args.bin_temperature)
    src = EpisodeSource(root=args.data, name=args.dataset, split=args.split)
    episodes = list(iter_episodes(src, policy.resolution, max_episodes=args.episodes))
    if not episodes:
        raise UserError(f"split {args.split!r} of {args.dataset!r} under {args.data} has no episodes")
    pred, expert, which = rollout_pairs(policy, episodes)
    res = {"checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split, "episodes": len(episodes),
           "bin_temperature": args.bin_temperature,
           "trained_on": training_overlap(episodes, args.data, args.dataset, policy.config),
           **agreement(pred, expert, episode=which)}
    seen = res["trained_on"]
    print(f"{args.checkpoint}: {len(episodes)} episodes of {args.dataset} {args.split}"
          + ("" if seen is None else f" ({seen} of them among its training demos)"))
    lo, hi = res["cosine_ci95"]
    print(f"  cosine {res['cosine']:.3f} [{lo:.3f}, {hi:.3f}] over {res['moving_steps']} moving steps (95 % interval "
          f"resampling episodes); unexplained variance "
          f"{res['unexplained']:.3f}; speed ratio {res['speed_ratio']:.2f}")
    for k, d in enumerate(res["dims"]):
        print(f"  dim {d}: at the limit {res['at_limit'][k]:.2f} (expert {res['expert_at_limit'][k]:.2f}), "
              f"at 0 {res['at_zero'][k]:.2f} (expert {res['expert_at_zero'][k]:.2f})")
    if args.out:
        write_json(args.out, res, indent=1)
    return res


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
