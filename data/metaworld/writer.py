"""Writes Meta-World scripted-expert episodes as RLDS datasets (TFDS TFRecord shards, OXE layout).

Two datasets over disjoint task sets:
  ``metaworld_robot/1.0.0``  image (fixed camera), action f32[4] (xyz hand motion + gripper effort, +1 closes),
                             observation/state f32[4] (hand xyz + gripper opening in [0, 1], 1 = open)
  ``metaworld_video/1.0.0``  action-free video: the same steps without ``action`` and ``observation/state``
Both carry per step a language instruction (one of the task's phrasings, picked by the episode seed), reward,
is_first/is_last/is_terminal, and ``ground_truth/{hand_pos, hand_motion, object_pos}`` (f32[3] each, world metres;
hand_motion = next hand position - this one, 0 on the last step) and ``ground_truth/hand_pixel`` (f32[2], the hand's
(x, y) in pixels of the stored image, ``env.project_points``) for LAM probes; per episode the seed, task, success and
id.

Episode ``i`` of a split uses task ``tasks[i % len(tasks)]`` and seed ``episode_seed(...)``, a pure function of
(generation seed, dataset, split, i) below 2**31 (evaluation seeds are >= 2**31, see ``EVAL_SEED_BASE``), so
generation is deterministic (same config -> same bytes) and any episode can be regenerated alone. Every step's action
is the noisy expert's, the last step's action is zero (invalid, as in demo_robot). A dataset is built in a hidden
``<out>/.partial-*`` directory and renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from data import rlds_writer
from data.demo.writer import check_output_dir
from data.metaworld import tasks as tasks_lib
from data.metaworld.env import CAMERAS, DEFAULT_CAMERA, EXPERT_NOISE, generate_episode  # noqa: F401 (re-export)
from data.metaworld.worker import RemoteEnv, Worker

VERSION = "1.0.0"
FPS = 80.0  # Meta-World control rate: 5 physics steps of 2.5 ms per env step
DATASET_NAMES = {"robot": "metaworld_robot", "video": "metaworld_video"}
DATA_SEED_LIMIT = 2**31  # generation seeds are in [0, 2**31); evaluation seeds in [2**31, 2**32)
EVAL_SEED_BASE = DATA_SEED_LIMIT


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What ``make_metaworld_data`` writes; ``episodes`` / ``val_episodes`` are per dataset."""

    episodes: int = 60
    val_episodes: int = 6
    resolution: int = 64
    seed: int = 0
    robot_tasks: tuple[str, ...] = tasks_lib.ROBOT_TASKS
    video_tasks: tuple[str, ...] = tasks_lib.VIDEO_TASKS
    datasets: tuple[str, ...] = ("robot", "video")
    camera: str = DEFAULT_CAMERA
    noise: float = EXPERT_NOISE
    max_steps: int = 0  # 0: each task's own limit (tasks.py)
    num_shards: int = 2

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.val_episodes < 0:
            raise ValueError(f"episode counts must be >= 1 (train) and >= 0 (val), got {self.episodes} and "
                             f"{self.val_episodes}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        if not 16 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in [16, 512] px, got {self.resolution}")
        if self.camera not in CAMERAS:
            from core.errors import unknown

            raise ValueError(unknown("camera", self.camera, CAMERAS))
        if self.noise < 0 or self.max_steps < 0:
            raise ValueError(f"noise and max_steps must be >= 0, got {self.noise} and {self.max_steps}")
        for d in self.datasets:
            if d not in DATASET_NAMES:
                from core.errors import unknown

                raise ValueError(unknown("dataset kind", d, DATASET_NAMES))
        for kind in self.datasets:
            names = self.tasks(kind)
            if not names:
                raise ValueError(f"no {kind} tasks given: expected at least one of {tuple(tasks_lib.TASKS)}")
            for t in names:
                tasks_lib.get_task(t)
        shared = sorted(set(self.robot_tasks) & set(self.video_tasks))
        if shared and set(self.datasets) == {"robot", "video"}:
            raise ValueError(f"robot and video tasks must be disjoint, both have {', '.join(shared)}")

    def tasks(self, kind: str) -> tuple[str, ...]:
        return self.robot_tasks if kind == "robot" else self.video_tasks


def features(resolution: int, with_actions: bool) -> Any:
    """The TFDS feature spec of one episode (see the module docstring)."""
    from data.tf_setup import tfds  # quiet environment first (core/quiet.py)

    f = tfds.features
    vec3 = f.Tensor(shape=(3,), dtype=np.float32)
    observation = {"image": f.Image(shape=(resolution, resolution, 3), dtype=np.uint8, encoding_format="jpeg")}
    step: dict[str, Any] = {
        "observation": observation,
        "reward": f.Scalar(dtype=np.float32),
        "discount": f.Scalar(dtype=np.float32),
        "is_first": f.Scalar(dtype=np.bool_),
        "is_last": f.Scalar(dtype=np.bool_),
        "is_terminal": f.Scalar(dtype=np.bool_),
        "language_instruction": f.Text(),
        "ground_truth": {"hand_pos": vec3, "hand_motion": vec3, "object_pos": vec3,
                         "hand_pixel": f.Tensor(shape=(2,), dtype=np.float32)},
    }
    if with_actions:
        observation["state"] = f.Tensor(shape=(4,), dtype=np.float32)
        step["action"] = f.Tensor(shape=(4,), dtype=np.float32)
    return f.FeaturesDict({
        "steps": f.Dataset(step),
        "episode_metadata": {"seed": f.Scalar(dtype=np.int64), "task": f.Text(), "success": f.Scalar(dtype=np.bool_),
                             "episode_id": f.Text()},
    })


def episode_seed(seed: int, kind: str, split: str, index: int) -> int:
    """Seed of one generated episode, in [0, DATA_SEED_LIMIT): a pure function of its coordinates."""
    words = [seed, list(DATASET_NAMES).index(kind), ("train", "val").index(split), index]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0]) % DATA_SEED_LIMIT


def _episodes(cfg: GenerationConfig, kind: str, split: str, n: int, worker: Worker, envs: dict[str, RemoteEnv],
              stats: dict) -> Iterator[tuple[str, dict]]:
    names = cfg.tasks(kind)
    for i in range(n):
        task = names[i % len(names)]
        if task not in envs:  # one env (and renderer) per task in the worker, reused for all its episodes
            envs[task] = RemoteEnv(worker, task, cfg.resolution, cfg.camera, max_steps=cfg.max_steps or None)
        ep = envs[task].episode(episode_seed(cfg.seed, kind, split, i), cfg.noise, kind == "robot")
        per = stats["per_task"].setdefault(task, {"episodes": 0, "steps": 0, "successes": 0})
        for d in (stats, per):
            d["episodes"] += 1
            d["steps"] += len(ep["steps"])
            d["successes"] += int(ep["episode_metadata"]["success"])
        yield f"{split}_{i:06d}", ep


def write_datasets(out: str, cfg: GenerationConfig, overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Write one RLDS dataset per kind in ``cfg.datasets`` under ``out``; returns a summary dict per dataset."""
    check_output_dir(out)
    rlds_writer.check_can_write(out, (DATASET_NAMES[k] for k in cfg.datasets), VERSION, overwrite)
    summaries = []
    worker = Worker()  # every MuJoCo render happens in this TF-free child (TFDS has loaded TensorFlow here)
    envs: dict[str, RemoteEnv] = {}
    try:
        for kind in cfg.datasets:
            summaries.append(_write_one(out, cfg, kind, worker, envs, progress))
    finally:
        worker.close()
    return summaries


def _write_one(out: str, cfg: GenerationConfig, kind: str, worker: Worker, envs: dict[str, RemoteEnv],
               progress: bool) -> dict:
    """Build one dataset in ``<out>/.partial-*`` and rename it into place; its summary (CPU: parent + worker)."""
    name, start = DATASET_NAMES[kind], time.time()
    cpu0, worker_cpu0 = time.process_time(), worker.cpu_seconds()
    stats: dict[str, Any] = {"episodes": 0, "steps": 0, "successes": 0, "per_task": {}}
    with rlds_writer.partial_dir(out, name) as partial:
        splits = {"train": _episodes(cfg, kind, "train", cfg.episodes, worker, envs, stats)}
        if cfg.val_episodes:
            splits["val"] = _episodes(cfg, kind, "val", cfg.val_episodes, worker, envs, stats)
        built = rlds_writer.store_splits(
            partial, name, VERSION, features(cfg.resolution, kind == "robot"), splits,
            totals={"train": cfg.episodes, "val": cfg.val_episodes},
            description=f"latent-vla Meta-World, {kind} dataset",
            shards=rlds_writer.num_shards(cfg.num_shards, cfg.episodes, cfg.val_episodes), progress=progress)
        # CPU of the whole build: the worker's (physics, rendering, expert) + ours (TFDS encoding, JPEG, writing)
        worker_cpu = worker.cpu_seconds() - worker_cpu0
        cpu = time.process_time() - cpu0 + worker_cpu
        summary = {"dataset": f"{name}/{VERSION}", **stats, "cpu_seconds": cpu, "worker_cpu_seconds": worker_cpu,
                   "success_rate": stats["successes"] / max(stats["episodes"], 1),
                   "frames_per_cpu_second": stats["steps"] / max(cpu, 1e-9), "bytes": rlds_writer.dir_bytes(built)}
        final = rlds_writer.commit(built, out, name, VERSION, {**dataclasses.asdict(cfg), "kind": kind, "fps": FPS,
                                                               "summary": summary})
    return {**summary, "path": final, "seconds": time.time() - start}


def format_summaries(summaries: list[dict]) -> str:
    """Markdown table: dataset, episodes, steps, expert success per task, frames per CPU second, size."""
    lines = ["| dataset | task | episodes | steps | expert success | frames/cpu-s | MB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        for task, t in s["per_task"].items():
            lines.append(f"| {s['dataset']} | {task} | {t['episodes']} | {t['steps']} | "
                         f"{t['successes']}/{t['episodes']} | | |")
        lines.append(f"| {s['dataset']} | all | {s['episodes']} | {s['steps']} | {s['successes']}/{s['episodes']} | "
                     f"{s['frames_per_cpu_second']:.1f} | {s['bytes'] / 1e6:.2f} |")
    return "\n".join(lines)
