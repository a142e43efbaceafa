"""Writes demo-world episodes as RLDS datasets (TFDS TFRecord shards, OXE-like feature layout).

Two datasets, one per embodiment: ``demo_robot/1.0.0`` (with actions and proprio) and ``demo_human/1.0.0`` (action-free
video: no ``action`` and no ``observation/state``). Each has ``train`` and ``val`` splits over several shards and is
readable offline with ``tfds.builder_from_directory(<out>/demo_robot/1.0.0)``.

A dataset is built in a hidden ``<out>/.partial-*`` directory and renamed into place only when complete, so an
interrupted or failed run never leaves anything that looks like a finished dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from data import rlds_writer
from data.demo import render as render_lib
from data.demo.expert import ScriptedExpert
from data.demo.tasks import MAX_BLOCKS
from data.demo.world import FPS, DemoWorld, WorldConfig

VERSION = "1.0.0"
DATASET_NAMES = {"robot": "demo_robot", "human": "demo_human"}
EXPERT_NOISE = {"robot": 0.003, "human": 0.005}  # the human demonstrator is a little less steady


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What ``make_demo_data`` writes. ``episodes`` / ``val_episodes`` are per embodiment."""

    episodes: int = 200
    val_episodes: int = 20
    resolution: int = 64
    seed: int = 0
    tasks: tuple[str, ...] = WorldConfig.tasks
    embodiments: tuple[str, ...] = ("robot", "human")
    max_steps: int = 120
    camera_jitter: float = 0.0
    num_distractors: int = 0
    num_shards: int = 4

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.val_episodes < 0:
            raise ValueError(f"episode counts must be >= 1 (train) and >= 0 (val), got {self.episodes} and "
                             f"{self.val_episodes}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        for e in self.embodiments:
            if e not in DATASET_NAMES:
                raise ValueError(f"unknown embodiment {e!r}: expected one of {tuple(DATASET_NAMES)}")
        for e in self.embodiments:  # validates resolution, tasks, max_steps, jitter, distractors
            self.world(e)

    def world(self, embodiment: str) -> WorldConfig:
        return WorldConfig(resolution=self.resolution, embodiment=embodiment, tasks=tuple(self.tasks),
                           max_steps=self.max_steps, camera_jitter=self.camera_jitter,
                           num_distractors=self.num_distractors)


def features(resolution: int, with_actions: bool) -> Any:
    """The TFDS feature spec of one episode (see the module docstring)."""
    from data.tf_setup import tfds  # quiet environment first (core/quiet.py)

    f = tfds.features
    observation = {"image": f.Image(shape=(resolution, resolution, 3), dtype=np.uint8, encoding_format="jpeg")}
    step: dict[str, Any] = {
        "observation": observation,
        "reward": f.Scalar(dtype=np.float32),
        "discount": f.Scalar(dtype=np.float32),
        "is_first": f.Scalar(dtype=np.bool_),
        "is_last": f.Scalar(dtype=np.bool_),
        "is_terminal": f.Scalar(dtype=np.bool_),
        "language_instruction": f.Text(),
        "ground_truth": {
            "effector_pos": f.Tensor(shape=(2,), dtype=np.float32),
            "block_pos": f.Tensor(shape=(MAX_BLOCKS, 2), dtype=np.float32),
            "block_present": f.Tensor(shape=(MAX_BLOCKS,), dtype=np.bool_),
            "flow": f.Tensor(shape=(resolution, resolution, 2), dtype=np.float16, encoding=f.Encoding.ZLIB),
        },
    }
    if with_actions:
        observation["state"] = f.Tensor(shape=(2,), dtype=np.float32)
        step["action"] = f.Tensor(shape=(2,), dtype=np.float32)
    return f.FeaturesDict({
        "steps": f.Dataset(step),
        "episode_metadata": {
            "seed": f.Scalar(dtype=np.int64),
            "task": f.Text(),
            "success": f.Scalar(dtype=np.bool_),
            "embodiment": f.Text(),
            "episode_id": f.Text(),
        },
    })


def episode_seed(seed: int, embodiment: str, split: str, index: int) -> int:
    """Seed of one episode, a pure function of its coordinates (so any episode can be regenerated alone)."""
    words = [seed, list(DATASET_NAMES).index(embodiment), ("train", "val").index(split), index]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])


def generate_episode(world: DemoWorld, seed: int, noise: float) -> dict[str, Any]:
    """Roll out the noisy expert from ``seed``; returns the RLDS example (steps as a list of dicts)."""
    expert = ScriptedExpert(noise=noise)
    obs, _ = world.reset(seed=seed)
    expert.reset(world, seed=seed + 1)
    with_actions = world.config.embodiment == "robot"
    res = world.config.resolution
    steps: list[dict[str, Any]] = []
    scene, image = world.scene, obs["image"]
    while True:
        done = world.success or world.steps >= world.max_steps
        action = np.zeros(2, np.float32) if done else expert.act(world)
        step = {
            "observation": {"image": image},
            "discount": np.float32(1.0),
            "is_first": not steps,
            "is_last": done,
            "is_terminal": done and world.success,
            "language_instruction": world.task.instruction,
            "ground_truth": {**world.ground_truth(), "flow": np.zeros((res, res, 2), np.float16)},
        }
        if with_actions:
            step["observation"]["state"] = obs["state"]
            step["action"] = action
        steps.append(step)
        if done:
            step["reward"] = np.float32(0.0)
            break
        obs, reward, _, _, _ = world.step(action)
        step["reward"] = np.float32(reward)
        after = world.scene
        step["ground_truth"]["flow"] = render_lib.flow(scene, after, res).astype(np.float16)
        scene, image = after, obs["image"]
    return {
        "steps": steps,
        "episode_metadata": {"seed": np.int64(seed), "task": world.task.family, "success": world.success,
                             "embodiment": world.config.embodiment, "episode_id": f"{seed:010d}"},
    }


def _episodes(cfg: GenerationConfig, embodiment: str, split: str, n: int, stats: dict) -> Iterator[tuple[str, dict]]:
    world = DemoWorld(cfg.world(embodiment))
    for i in range(n):
        ep = generate_episode(world, episode_seed(cfg.seed, embodiment, split, i), EXPERT_NOISE[embodiment])
        stats["episodes"] += 1
        stats["steps"] += len(ep["steps"])
        stats["successes"] += int(ep["episode_metadata"]["success"])
        yield f"{split}_{i:06d}", ep


def check_output_dir(out: str) -> None:
    """Fail early, in one line, when ``out`` cannot be created or written."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to output directory {out!r}: {e.strerror or e}") from None


def existing_summaries(out: str, cfg: GenerationConfig) -> list[dict] | None:
    """Summaries of complete datasets under ``out`` generated with exactly ``cfg``, or None if any differs."""
    summaries = []
    for e in cfg.embodiments:
        path = os.path.join(out, DATASET_NAMES[e], VERSION)
        try:
            with open(os.path.join(path, "generation.json")) as f:
                stored = json.load(f)
            with open(os.path.join(path, "dataset_info.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        wanted = json.loads(json.dumps({**dataclasses.asdict(cfg), "embodiment": e, "fps": FPS}))
        if {k: v for k, v in stored.items() if k != "summary"} != wanted or "summary" not in stored:
            return None
        episodes = sum(int(n) for split in info["splits"] for n in split["shardLengths"])
        summaries.append({**stored["summary"], "episodes": episodes, "seconds": 0.0, "path": path})
    return summaries


def write_datasets(out: str, cfg: GenerationConfig, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Write one RLDS dataset per embodiment under ``out``; returns a summary dict per dataset."""
    check_output_dir(out)
    rlds_writer.check_can_write(out, (DATASET_NAMES[e] for e in cfg.embodiments), VERSION, overwrite)
    summaries = []
    shards = rlds_writer.num_shards(cfg.num_shards, cfg.episodes, cfg.val_episodes)
    for e in cfg.embodiments:
        name, start = DATASET_NAMES[e], time.time()
        stats = {"episodes": 0, "steps": 0, "successes": 0}
        with rlds_writer.partial_dir(out, name) as partial:
            splits = {"train": _episodes(cfg, e, "train", cfg.episodes, stats)}
            if cfg.val_episodes:
                splits["val"] = _episodes(cfg, e, "val", cfg.val_episodes, stats)
            built = rlds_writer.store_splits(
                partial, name, VERSION, features(cfg.resolution, e == "robot"), splits,
                totals={"train": cfg.episodes, "val": cfg.val_episodes},
                description=f"latent-vla demo world, {e} embodiment", shards=shards, progress=progress)
            summary = {"dataset": f"{name}/{VERSION}", **stats,
                       "success_rate": stats["successes"] / max(stats["episodes"], 1),
                       "bytes": rlds_writer.dir_bytes(built)}
            final = rlds_writer.commit(built, out, name, VERSION, {**dataclasses.asdict(cfg), "embodiment": e,
                                                                   "fps": FPS, "summary": summary})
        summaries.append({**summary, "path": final, "seconds": time.time() - start})
    return summaries


def world_seeds(root: str) -> dict[int, str]:
    """Every world seed the demo datasets under ``root`` (a ``make_demo_data --out`` directory) were generated from,
    recomputed from each dataset's ``generation.json``: seed -> "demo_robot train episode 17". Empty when ``root``
    holds no demo dataset. Closed-loop evaluation seeds must avoid all of them (scripts/compare.py checks)."""
    seeds: dict[int, str] = {}
    for embodiment, name in DATASET_NAMES.items():
        try:
            with open(os.path.join(root, name, VERSION, "generation.json")) as f:
                g = json.load(f)
        except (OSError, ValueError):
            continue
        for split, n in (("train", int(g["episodes"])), ("val", int(g["val_episodes"]))):
            for i in range(n):
                seeds.setdefault(episode_seed(int(g["seed"]), embodiment, split, i), f"{name} {split} episode {i}")
    return seeds
