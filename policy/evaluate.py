"""Closed-loop evaluation on the demo world: success rate with a 95% Wilson interval over seeded episodes.

A policy is anything with this protocol (``policy.policy.Policy`` is one; ``ExpertPolicy`` and ``RandomPolicy`` below
are the baselines that give the harness its sanity figures)::

    metadata() -> dict   # "image_size" R, "history_offsets" (e.g. [-2, 0]), "action_dim" A, "chunk" H;
                         # optional: "frame_stride" (default 1), "execute_steps", "name", "recipe", "num_demos"
    reset() -> None      # called once at the start of every episode (after the world was reset)
    act(images uint8[W, R, R, 3] oldest first, instruction, *, seed) -> f32[H, A] de-normalized actions
                         # with metadata()["proprio_dim"] > 0 also proprio=obs["state"]: the world's RAW state at
                         # the newest frame, what the RLDS writer stores as observation/state (the dataset's
                         # proprio); the policy normalizes it as its training data was (policy/policy.py step 2b)
    bind(env) -> None    # OPTIONAL: called once per ``evaluate`` with the DemoWorld, before the first episode;
                         # privileged baselines (the scripted expert) read the world state through it

Per episode ``i`` (world seed ``seed + i``; the task is whatever the world samples for that seed) the harness keeps
every frame, queries the policy with frames ``t + o * frame_stride`` for ``o`` in ``history_offsets``, clamped at the
episode start exactly like ``data/windows.py`` does for training (an index before the first frame is the first frame),
converts each 7-D action back to the world's native (dx, dy) (the inverse of the ``demo_robot`` registry padding
``[dx, dy, 0, 0, 0, 0, 1]`` in ``data/oxe.py``), executes ``execute_steps`` actions of the chunk, and re-queries.
Each query gets its own seed (a function of the episode seed and the query index), so a run is deterministic.

    python -m policy.evaluate --checkpoint RUN_DIR [--step N] [--episodes 50] [--seed 0] [--execute-steps K]
        [--gif-dir DIR] [--out results.json]          # RUN_DIR: a policy.finetune or a policy.reference run
    python -m policy.evaluate --policy expert|random --episodes 200     # the harness's sanity figures
    python -m policy.evaluate --world metaworld --policy expert --tasks reach-v3,drawer-open-v3   # Meta-World
    python -m policy.evaluate --world metaworld --server http://127.0.0.1:8000                    # a served policy

What a run reports (intervals, rollout GIFs, the results table and plot) lives in ``policy/eval_report.py``.
Worlds (``WORLDS``): the harness needs only a small ``World`` adapter per world (env factory, action conversion,
episode seeds, task rows, references); ``policy/metaworld_eval.py`` is Meta-World's (docs/metaworld.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from core.errors import UserError
from core.jsonable import jsonable, write_json
from data.demo import tasks as tasks_lib
from data.demo.expert import ScriptedExpert
from data.demo.world import MAX_STEP, DemoWorld, WorldConfig
from data.demo.writer import DATASET_NAMES, EXPERT_NOISE, VERSION, GenerationConfig
from policy.eval_report import bootstrap_ci, format_table, wilson_interval, write_rollout

# The demo_robot registry entry (data/oxe.py `_demo_robot`) stores the native (dx, dy) as [dx, dy, 0, 0, 0, 0, 1]:
# dims 0-1 carry the motion, dims 2-5 are zero and dim 6 is the gripper (1 = open). Kept literal here so that
# importing the evaluator does not import TensorFlow; tests/test_evaluate.py checks it against the registry.
ACTION_DIM = 7
NATIVE_DIMS = (0, 1)
PAD_VALUES = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)


class PolicyLike(Protocol):
    def metadata(self) -> dict: ...

    def reset(self) -> None: ...

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray: ...


# -------------------------------------------------------------------------------------------- action conversion
def native_to_padded(action: np.ndarray) -> np.ndarray:
    """World actions f[..., 2] -> the registry's 7-D layout f32[..., 7] ([dx, dy, 0, 0, 0, 0, 1])."""
    a = np.asarray(action, np.float32)
    if a.shape[-1] != len(NATIVE_DIMS):
        raise ValueError(f"native demo-world actions have {len(NATIVE_DIMS)} dims, got shape {a.shape}")
    out = np.broadcast_to(PAD_VALUES, (*a.shape[:-1], ACTION_DIM)).copy()
    out[..., list(NATIVE_DIMS)] = a
    return out


def padded_to_native(action: np.ndarray) -> np.ndarray:
    """The inverse of ``native_to_padded``: f[..., 7] -> f32[..., 2] (dims 2-6 are dropped); 2-D input passes."""
    a = np.asarray(action, np.float32)
    if a.shape[-1] == len(NATIVE_DIMS):
        return a.copy()
    if a.shape[-1] != ACTION_DIM:
        raise ValueError(f"expected actions with {ACTION_DIM} (or {len(NATIVE_DIMS)}) dims, got shape {a.shape}")
    return a[..., list(NATIVE_DIMS)].copy()


# --------------------------------------------------------------------------------------------------- history
def history_indices(t: int, offsets: Sequence[int], stride: int = 1) -> list[int]:
    """Frame indices for step ``t``: t + o * stride clamped to [0, t] (data/windows.py `_gather_clamped`)."""
    return [min(max(t + int(o) * stride, 0), t) for o in offsets]


def world_config_from_dataset(path: str) -> WorldConfig:
    """The robot WorldConfig a demo dataset was rendered with (its ``generation.json``); ``path`` is the dataset
    version dir (``.../demo_robot/1.0.0``), the dataset dir, or the root ``make_demo_data --out`` wrote."""
    for cand in (path, os.path.join(path, VERSION), os.path.join(path, DATASET_NAMES["robot"], VERSION)):
        f = os.path.join(cand, "generation.json")
        if os.path.isfile(f):
            with open(f) as fh:
                g = json.load(fh)
            fields = {k.name for k in dataclasses.fields(GenerationConfig)}
            cfg = GenerationConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items()
                                      if k in fields})
            return cfg.world("robot")
    raise FileNotFoundError(f"no generation.json under {path!r} (expected a demo dataset written by make_demo_data)")


def default_world_config() -> WorldConfig:
    """What the default demo_robot dataset is rendered with: 64 px, robot embodiment, all tasks, 120 steps."""
    return GenerationConfig().world("robot")


# --------------------------------------------------------------------------------------------------- adapters
class ExpertPolicy:
    """The privileged scripted expert (data/demo/expert.py) behind the policy protocol.

    It reads the world state, so it needs ``bind(env)`` (``evaluate`` calls it). Each query returns one action
    (chunk 1) in the 7-D layout; the expert's noise is re-seeded from the first query's seed of every episode.
    """

    def __init__(self, noise: float = EXPERT_NOISE["robot"], image_size: int = 64,
                 history_offsets: Sequence[int] = (0,)) -> None:
        self.expert = ScriptedExpert(noise=noise)
        self.env: DemoWorld | None = None
        self._image_size, self._offsets = image_size, tuple(history_offsets)
        self._fresh = True

    def metadata(self) -> dict:
        return {"name": "expert", "image_size": self._image_size, "history_offsets": list(self._offsets),
                "action_dim": ACTION_DIM, "chunk": 1}

    def bind(self, env: DemoWorld) -> None:
        self.env = env

    def reset(self) -> None:
        self._fresh = True

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("ExpertPolicy needs the world: call bind(env) first (evaluate() does)")
        if self._fresh:  # the world was reset since the last episode: plan for the new task
            self.expert.reset(self.env, seed=seed)
            self._fresh = False
        return native_to_padded(self.expert.act(self.env))[None]


class RandomPolicy:
    """Uniform random planar actions in [-MAX_STEP, MAX_STEP]² (the world's clip), 7-D padded, ``chunk`` per query."""

    def __init__(self, chunk: int = 1, image_size: int = 64, history_offsets: Sequence[int] = (0,)) -> None:
        self.chunk, self._image_size, self._offsets = chunk, image_size, tuple(history_offsets)

    def metadata(self) -> dict:
        return {"name": "random", "image_size": self._image_size, "history_offsets": list(self._offsets),
                "action_dim": ACTION_DIM, "chunk": self.chunk}

    def reset(self) -> None:
        pass

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return native_to_padded(rng.uniform(-MAX_STEP, MAX_STEP, (self.chunk, 2)))


def world_state(obs: dict) -> np.ndarray:
    """The raw state f32[S] of a world observation, as the RLDS writer stores it (data/demo/writer.py
    ``observation/state`` = ``obs["state"]`` of the same step): the proprio a state-input policy was trained on."""
    if "state" not in obs:
        raise ValueError(f"this policy takes the effector state (proprio) but the world's observations have no "
                         f"'state' (keys: {sorted(obs)})")
    return np.asarray(obs["state"], np.float32)


# ----------------------------------------------------------------------------------------------------- images
def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking), like data/augment.py decode_frames."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit]


# ----------------------------------------------------------------------------------------------------- worlds
@dataclasses.dataclass(frozen=True)
class World:
    """What the harness needs from a world. ``make(cfg)`` returns an env with ``reset(seed) -> (obs
    {"image"}, info {"instruction", "task"})``, ``step(native) -> (obs, reward, terminated, truncated, info)`` and
    ``success`` / ``progress`` / ``steps``; ``episode_seed(seed, i)`` is episode i's world seed; ``families(cfg)``
    orders the per-task rows; ``expert()`` / ``random()`` build the reference policies."""

    name: str
    make: Callable[[Any], Any]
    default_config: Callable[[], Any]
    to_native: Callable[[np.ndarray], np.ndarray]
    native_dim: int
    episode_seed: Callable[[int, int], int]
    families: Callable[[Any], Sequence[str]]
    expert: Callable[[], Any]
    random: Callable[[], Any]


def _demo_world(cfg: WorldConfig) -> DemoWorld:
    return DemoWorld(dataclasses.replace(cfg, images=True))


def _metaworld() -> World:
    from policy import metaworld_eval as mw  # lazy: MuJoCo only when Meta-World is evaluated

    return World("metaworld", mw.MetaWorldSuite, mw.MetaWorldEvalConfig, mw.padded_to_native, mw.NATIVE_DIM,
                 mw.eval_seed, lambda cfg: tuple(cfg.tasks), mw.ExpertPolicy, mw.RandomPolicy)


WORLDS: dict[str, Callable[[], World]] = {
    "demo": lambda: World("demo", _demo_world, default_world_config, padded_to_native, len(NATIVE_DIMS),
                          lambda seed, i: seed + i, lambda cfg: tasks_lib.TASK_FAMILIES, ExpertPolicy, RandomPolicy),
    "metaworld": _metaworld,
}


def get_world(name: str) -> World:
    if name not in WORLDS:
        from core.errors import unknown

        raise ValueError(unknown("world", name, WORLDS))
    return WORLDS[name]()


# ------------------------------------------------------------------------------------------------- evaluation
def _query_seed(episode_seed: int, query: int) -> int:
    return int(np.random.SeedSequence([episode_seed & 0xFFFFFFFF, query]).generate_state(1, np.uint32)[0] >> 1)


def _int_or(meta: dict, key: str, default: Any) -> Any:
    v = meta.get(key)
    return default if v is None else v


def evaluate(policy: PolicyLike, *, episodes: int = 50, seed: int = 0, world_config: WorldConfig | None = None,
             execute_steps: int | None = None, max_steps: int | None = None, gif_dir: str | None = None,
             gif_episodes: int = 4, gif_format: str = "auto", jpeg_quality: int | None = None,
             name: str | None = None, progress: bool = True, world: str = "demo") -> dict:
    """Run ``episodes`` seeded closed-loop episodes (episode i: world seed ``seed + i``) and return the figures.

    world: "demo" (default) or "metaworld" (``WORLDS``; world_config is then a ``MetaWorldEvalConfig``, episode i
        plays task ``tasks[i % len(tasks)]`` with a seed disjoint from data generation: policy/metaworld_eval.py).

    world_config: default ``default_world_config()`` (the demo_robot generation config; ``world_config_from_dataset``
        reads another dataset's). max_steps overrides its episode step limit.
    execute_steps: actions of each chunk executed before re-querying; default ``metadata()["execute_steps"]`` or the
        whole chunk H.
    jpeg_quality: if set, every frame is JPEG round-tripped at that quality before the policy sees it (the training
        frames were stored as JPEG); None passes the rendered frames.
    gif_dir: rollouts of the first ``gif_episodes`` episodes are written there (GIF, or PNG filmstrips), plus the
        first successful and the first failed episode after them when the first ones have no such outcome.

    Returns a JSON-serializable dict: success_rate, ci95 (Wilson), successes, episodes, progress (mean per-episode
    task progress in [0, 1], ``tasks.Task.progress``) and progress_ci95 (bootstrap), per_family {family: {rate, ci95,
    n, successes, progress, progress_ci95}}, mean_episode_length, seconds_per_episode, queries_per_second
    (policy.act calls per second spent in act), per-episode records, and the settings used.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    meta = dict(policy.metadata())
    adapter = get_world(world)
    cfg = world_config or adapter.default_config()
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=int(max_steps))
    image_size = int(_int_or(meta, "image_size", cfg.resolution))
    offsets = [int(o) for o in _int_or(meta, "history_offsets", [0])]
    if not offsets or any(o > 0 for o in offsets):
        raise ValueError(f"history_offsets must be non-empty and <= 0 (past frames only), got {offsets}")
    stride = int(_int_or(meta, "frame_stride", 1))
    chunk = int(_int_or(meta, "chunk", 1))
    k_exec = int(execute_steps or _int_or(meta, "execute_steps", chunk))
    if k_exec < 1:
        raise ValueError(f"execute_steps must be >= 1, got {k_exec}")
    label = name or meta.get("name") or type(policy).__name__
    wants_state = int(_int_or(meta, "proprio_dim", 0)) > 0

    env = adapter.make(cfg)
    if hasattr(policy, "bind"):
        policy.bind(env)
    if gif_dir:
        os.makedirs(gif_dir, exist_ok=True)

    records, gifs, gif_outcomes = [], [], []
    queries, act_seconds, nonfinite = 0, 0.0, 0
    bar = range(episodes)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc=f"eval {label}", unit="ep", dynamic_ncols=True)
    start = time.perf_counter()
    for i in bar:
        ep_seed = adapter.episode_seed(seed, i)
        obs, info = env.reset(seed=ep_seed)
        policy.reset()
        instruction, family = info["instruction"], info["task"]
        raw = [obs["image"]]
        seen = [_resize(raw[0] if jpeg_quality is None else _jpeg_roundtrip(raw[0], jpeg_quality), image_size)]
        ep_queries, done = 0, False
        t0 = time.perf_counter()
        while not done:
            t = len(seen) - 1
            images = np.stack([seen[j] for j in history_indices(t, offsets, stride)])
            q0 = time.perf_counter()
            kw = {"proprio": world_state(obs)} if wants_state else {}
            out = np.asarray(policy.act(images, instruction, seed=_query_seed(ep_seed, ep_queries), **kw), np.float32)
            act_seconds += time.perf_counter() - q0
            queries += 1
            ep_queries += 1
            if out.ndim == 1:
                out = out[None]
            if out.ndim != 2 or out.shape[0] < 1:
                raise ValueError(f"policy.act must return f32[H, A] with H >= 1, got shape {out.shape}")
            actions = adapter.to_native(out[:k_exec])
            for a in actions:
                if not np.all(np.isfinite(a)):
                    nonfinite += 1
                    a = np.zeros(adapter.native_dim, np.float32)  # counted; the episode goes on with a no-op
                obs, _, terminated, truncated, _ = env.step(a)
                raw.append(obs["image"])
                img = obs["image"] if jpeg_quality is None else _jpeg_roundtrip(obs["image"], jpeg_quality)
                seen.append(_resize(img, image_size))
                if terminated or truncated:
                    done = True
                    break
        success = bool(env.success)
        rec = {"index": i, "seed": ep_seed, "family": family, "instruction": instruction, "success": success,
               "progress": float(env.progress), "steps": int(env.steps), "queries": ep_queries,
               "seconds": time.perf_counter() - t0}
        records.append(rec)
        # the first gif_episodes episodes, plus the first success and the first failure when those lack one (a
        # report then shows what the policy does right and wrong; at most gif_episodes + 1 files)
        if gif_dir and gif_episodes and (i < gif_episodes or success not in gif_outcomes):
            gif_outcomes.append(success)
            stem = os.path.join(gif_dir, f"{i:03d}_seed{ep_seed}_{'success' if success else 'failure'}_"
                                         f"{_slug(instruction)}")
            gifs.append(write_rollout(raw, stem, gif_format, fps=10))
        if progress:
            k = sum(r["success"] for r in records)
            bar.set_postfix(success=f"{k}/{len(records)}")
    total = time.perf_counter() - start
    if hasattr(env, "close"):
        env.close()

    k = sum(r["success"] for r in records)
    per_family = {}
    for fam in adapter.families(cfg):
        rs = [r for r in records if r["family"] == fam]
        if rs:
            kf = sum(r["success"] for r in rs)
            prog = [r["progress"] for r in rs]
            per_family[fam] = {"rate": kf / len(rs), "ci95": list(wilson_interval(kf, len(rs))), "n": len(rs),
                               "successes": kf, "progress": float(np.mean(prog)),
                               "progress_ci95": list(bootstrap_ci(prog))}
    lengths = [r["steps"] for r in records]
    ok_lengths = [r["steps"] for r in records if r["success"]]
    return {
        "name": label,
        "recipe": meta.get("recipe"),
        "demos": meta.get("num_demos") or meta.get("demos") or None,  # 0 (= all demos) -> None: unknown count
        "episodes": episodes,
        "successes": k,
        "success_rate": k / episodes,
        "ci95": list(wilson_interval(k, episodes)),
        "progress": float(np.mean([r["progress"] for r in records])),
        # the bootstrap's own stream, not the world seeds': the comparison report resamples the same episodes
        # (policy/compare_report.py `pooled`) and must print the same interval for one run
        "progress_ci95": list(bootstrap_ci([r["progress"] for r in records])),
        "per_family": per_family,
        "mean_episode_length": float(np.mean(lengths)),
        "mean_success_length": float(np.mean(ok_lengths)) if ok_lengths else None,
        "seconds_per_episode": total / episodes,
        "queries": queries,
        "queries_per_second": queries / act_seconds if act_seconds > 0 else None,
        "nonfinite_actions": nonfinite,
        "world": adapter.name,
        "settings": {"seed": seed, "execute_steps": k_exec, "chunk": chunk, "history_offsets": offsets,
                     "frame_stride": stride, "image_size": image_size, "jpeg_quality": jpeg_quality,
                     "world_config": {**dataclasses.asdict(cfg), "tasks": list(cfg.tasks)}},
        "metadata": jsonable(meta),
        "gifs": gifs,
        "records": records,
    }


# ------------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m policy.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="fine-tuning run dir (policy.policy.Policy.from_checkpoint) or a "
                     "policy.reference run dir (reference.json)")
    src.add_argument("--policy", choices=("expert", "random"), help="a baseline instead of a checkpoint")
    src.add_argument("--server", default=None, help="evaluate the policy served at this URL (policy/serve.py)")
    p.add_argument("--world", default=None, choices=tuple(WORLDS),
                   help="demo or metaworld (default: a fine-tuning checkpoint's own, else demo)")
    p.add_argument("--tasks", default=None, help="metaworld: comma-separated tasks (default: the robot tasks)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="episode i uses world seed SEED + i")
    p.add_argument("--execute-steps", type=int, default=None, help="actions executed per chunk (default: all H)")
    p.add_argument("--bin-temperature", type=float, default=0.0,
                   help="action-bin policies (LAPA layout): 0 = argmax, as LAPA decodes (default); > 0 = sample the "
                        "bins at this temperature, seeded per query")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the world config's)")
    p.add_argument("--data", default=None, help="demo dataset dir whose generation.json sets the world config "
                                                "(default: a fine-tuning checkpoint's own demos', else the standard "
                                                "demo_robot config, 64 px)")
    p.add_argument("--jpeg-quality", type=int, default=None, help="JPEG round-trip frames at this quality")
    p.add_argument("--gif-dir", default=None)
    p.add_argument("--gif-episodes", type=int, default=4)
    p.add_argument("--name", default=None, help="label in the table (default: the policy's metadata name)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--no-progress", action="store_true")
    return p


def trained_world(config: Any) -> tuple[str, Any]:
    """(world, world config) a fine-tuning checkpoint's demos came from (`policy.finetune.closed_loop_world` on its
    recorded config), for a `--checkpoint` evaluated without --world / --data; the default demo world, with a note,
    when its datasets are gone or from no simulated world."""
    from policy.finetune import closed_loop_world

    try:
        world, cfg = closed_loop_world(config)
    except (UserError, OSError) as e:
        print(f"evaluating in the default demo world: the checkpoint's training world is unknown ({e})", flush=True)
        return "demo", None
    print(f"evaluating in the world of the checkpoint's fine-tuning demos ({config.data.root}; --data or --world "
          "choose another)", flush=True)
    return world, cfg


def main(argv: Sequence[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    for flag in ("episodes", "execute_steps", "max_steps", "gif_episodes"):
        v = getattr(args, flag)
        if v is not None and v < (0 if flag == "gif_episodes" else 1):
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {v}")
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in [1, 100], got {args.jpeg_quality}")
    adapter = get_world(args.world or "demo")
    if args.bin_temperature and not args.checkpoint:
        raise UserError("--bin-temperature applies to an action-bin checkpoint (--checkpoint), not to a baseline "
                        "or a served policy")  # a flow checkpoint refuses it in Policy
    if args.world == "metaworld":  # checked before a checkpoint is loaded
        if args.data:
            raise UserError("--data sets the demo world's config; Meta-World takes --tasks")
        from policy.metaworld_eval import MetaWorldEvalConfig

        cfg = MetaWorldEvalConfig(**({"tasks": tuple(t for t in args.tasks.split(",") if t)} if args.tasks else {}))
    elif args.tasks:
        raise UserError("--tasks applies to --world metaworld (the demo world samples its task families)")
    else:
        cfg = world_config_from_dataset(args.data) if args.data else None
    if args.policy == "expert":
        policy: Any = adapter.expert()
    elif args.policy == "random":
        policy = adapter.random()
    elif args.server:
        from policy.client import connect

        policy = connect(args.server)
    elif os.path.isfile(os.path.join(args.checkpoint, "reference.json")):  # a policy.reference run (no steps)
        from policy.reference import ReferencePolicy

        if args.bin_temperature:
            raise UserError("--bin-temperature applies to an action-bin checkpoint, not to a policy.reference run")
        policy = ReferencePolicy.load(args.checkpoint)
    else:
        from policy.policy import Policy  # lazy: JAX/model code only when a checkpoint is evaluated

        # step None: the latest (as policy.serve)
        policy = Policy.from_checkpoint(args.checkpoint, args.step, bin_temperature=args.bin_temperature)
        if args.world is None and args.data is None:
            args.world, cfg = trained_world(policy.config)
    res = evaluate(policy, episodes=args.episodes, seed=args.seed, world_config=cfg, execute_steps=args.execute_steps,
                   max_steps=args.max_steps, gif_dir=args.gif_dir, gif_episodes=args.gif_episodes,
                   jpeg_quality=args.jpeg_quality, name=args.name, progress=not args.no_progress,
                   world=args.world or "demo")
    if args.checkpoint:
        res["checkpoint"] = {"run_dir": os.path.abspath(args.checkpoint), "step": args.step}
    if args.out:
        write_json(args.out, res, indent=1)
    print(format_table([res]))
    qps = res["queries_per_second"]
    print(f"mean episode length {res['mean_episode_length']:.1f} steps, {res['seconds_per_episode']:.2f} s/episode, "
          f"{'n/a' if qps is None else f'{qps:.1f}'} policy queries/s"
          + (f", {res['nonfinite_actions']} non-finite actions replaced by no-ops" if res["nonfinite_actions"] else "")
          + (f"; results in {args.out}" if args.out else ""))
    for g in res["gifs"]:
        print("rollout:", g)
    return res


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
