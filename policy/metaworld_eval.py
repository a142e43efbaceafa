"""Meta-World as a second world for the closed-loop harness (``policy/evaluate.py``, ``--world metaworld``).

What the harness needs from a world is a small adapter (``evaluate.World``); this module provides it for Meta-World:
  * ``MetaWorldSuite``: one env (and renderer) per evaluated task, reused, in a TF-free render worker process
    (data/metaworld/worker.py); episode ``i`` of a run plays task ``tasks[i % len(tasks)]`` with world seed
    ``EVAL_SEED_BASE + seed + i``. Generation seeds are < ``EVAL_SEED_BASE`` (data/metaworld/writer.py), so
    evaluation never replays a training episode's object and goal positions.
  * action conversion between the 7-D registry layout (``metaworld_robot`` in data/oxe.py:
    ``[dx, dy, dz, 0, 0, 0, (1 - effort) / 2]``) and Meta-World's native ``[dx, dy, dz, effort]``;
  * the references: the noisy scripted expert (privileged: reads the simulator state via ``bind``) and uniform
    random actions.
The same loop runs a served policy: ``PolicyClient`` (policy/client.py) has the harness's policy protocol, so
``evaluate(PolicyClient(url), world="metaworld")`` evaluates a remote (e.g. 7B, GPU-served) policy.

    python -m policy.evaluate --world metaworld --policy expert --episodes 20 --tasks reach-v3,drawer-open-v3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from core.errors import InvalidInput
from data.metaworld import tasks as tasks_lib
from data.metaworld.env import DEFAULT_CAMERA, EXPERT_NOISE, ScriptedExpert
from data.metaworld.worker import RemoteEnv, Worker
from data.metaworld.writer import DATA_SEED_LIMIT, EVAL_SEED_BASE

ACTION_DIM = 7
NATIVE_DIM = 4


@dataclasses.dataclass(frozen=True)
class MetaWorldEvalConfig:
    """Evaluated tasks (default: the robot tasks), image size, camera; max_steps 0 = each task's own limit."""

    tasks: tuple[str, ...] = tasks_lib.ROBOT_TASKS
    resolution: int = 64
    camera: str = DEFAULT_CAMERA
    max_steps: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise InvalidInput(f"no Meta-World tasks to evaluate: expected some of {tuple(tasks_lib.TASKS)}")
        for t in self.tasks:
            tasks_lib.get_task(t)
        if self.max_steps < 0:
            raise InvalidInput(f"max_steps must be >= 0, got {self.max_steps}")


def native_to_padded(action: np.ndarray) -> np.ndarray:
    """Meta-World actions f[..., 4] (xyz, gripper effort +1 closes) -> the registry's 7-D layout f32[..., 7]."""
    a = np.asarray(action, np.float32)
    if a.shape[-1] != NATIVE_DIM:
        raise ValueError(f"native Meta-World actions have {NATIVE_DIM} dims, got shape {a.shape}")
    out = np.zeros((*a.shape[:-1], ACTION_DIM), np.float32)
    out[..., :3] = a[..., :3]
    out[..., 6] = np.clip((1.0 - a[..., 3]) / 2.0, 0.0, 1.0)
    return out


def padded_to_native(action: np.ndarray) -> np.ndarray:
    """The inverse of ``native_to_padded`` (rotation dims 3-5 are dropped): f[..., 7] -> f32[..., 4]."""
    a = np.asarray(action, np.float32)
    if a.shape[-1] == NATIVE_DIM:
        return a.copy()
    if a.shape[-1] != ACTION_DIM:
        raise ValueError(f"expected actions with {ACTION_DIM} (or {NATIVE_DIM}) dims, got shape {a.shape}")
    return np.concatenate([a[..., :3], 1.0 - 2.0 * a[..., 6:7]], -1)


def eval_seed(seed: int, index: int) -> int:
    """World seed of evaluation episode ``index``: EVAL_SEED_BASE + seed + index, never a generation seed."""
    s = EVAL_SEED_BASE + int(seed) + int(index)
    if not EVAL_SEED_BASE <= s < 2**32:
        raise ValueError(f"evaluation seed {seed} + episode {index} leaves [0, {2**32 - EVAL_SEED_BASE}): choose a "
                         "smaller --seed (evaluation seeds must stay disjoint from data generation's)")
    return s


def is_generation_seed(world_seed: int) -> bool:
    return 0 <= world_seed < DATA_SEED_LIMIT


class MetaWorldSuite:
    """Several Meta-World tasks behind the demo world's interface; ``reset(seed)`` picks the task from the seed.

    The envs live in a render worker process (data/metaworld/worker.py, started on first use): a policy evaluated
    here may have loaded TensorFlow, and MuJoCo's rendering segfaults next to it."""

    def __init__(self, cfg: MetaWorldEvalConfig) -> None:
        self.cfg = cfg
        self._worker: Worker | None = None
        self._envs: dict[str, RemoteEnv] = {}
        self.current: RemoteEnv | None = None

    def env(self, task: str) -> RemoteEnv:
        if task not in self._envs:
            if self._worker is None:
                self._worker = Worker()
            self._envs[task] = RemoteEnv(self._worker, task, self.cfg.resolution, self.cfg.camera,
                                         max_steps=self.cfg.max_steps or None)
        return self._envs[task]

    def reset(self, seed: int) -> tuple[dict, dict]:
        if is_generation_seed(seed):
            raise ValueError(f"world seed {seed} is a data-generation seed (< {DATA_SEED_LIMIT}); evaluation seeds "
                             "come from eval_seed()")
        self.current = self.env(self.cfg.tasks[(seed - EVAL_SEED_BASE) % len(self.cfg.tasks)])
        return self.current.reset(seed)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self._require().step(action)

    def _require(self) -> RemoteEnv:
        if self.current is None:
            raise RuntimeError("MetaWorldSuite: call reset(seed) before step()")
        return self.current

    @property
    def success(self) -> bool:
        return self._require().success

    @property
    def progress(self) -> float:
        return self._require().progress

    @property
    def steps(self) -> int:
        return self._require().steps

    def close(self) -> None:
        self._envs.clear()
        self.current = None
        if self._worker is not None:  # the worker closes its envs when it exits
            self._worker.close()
            self._worker = None


class ExpertPolicy:
    """The noisy scripted expert of the current task, 7-D padded, chunk 1 (privileged: needs ``bind(suite)``)."""

    def __init__(self, noise: float = EXPERT_NOISE, image_size: int = 64, history_offsets: Sequence[int] = (0,)):
        self.noise, self._image_size, self._offsets = noise, image_size, tuple(history_offsets)
        self.suite: MetaWorldSuite | None = None
        self._experts: dict[str, ScriptedExpert] = {}
        self._fresh = True

    def metadata(self) -> dict:
        return {"name": "expert", "image_size": self._image_size, "history_offsets": list(self._offsets),
                "action_dim": ACTION_DIM, "chunk": 1}

    def bind(self, suite: MetaWorldSuite) -> None:
        self.suite = suite

    def reset(self) -> None:
        self._fresh = True

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        if self.suite is None or self.suite.current is None:
            raise RuntimeError("ExpertPolicy needs the Meta-World suite: call bind(suite) first (evaluate() does)")
        env = self.suite.current
        expert = self._experts.setdefault(env.task.name, ScriptedExpert(env.task.name, self.noise))
        if self._fresh:  # a new episode: re-seed the noise from its first query's seed
            expert.reset(seed)
            self._fresh = False
        return native_to_padded(expert.act(env.raw_obs))[None]


class RandomPolicy:
    """Uniform random native actions in [-1, 1]^4, 7-D padded, ``chunk`` per query."""

    def __init__(self, chunk: int = 1, image_size: int = 64, history_offsets: Sequence[int] = (0,)):
        self.chunk, self._image_size, self._offsets = chunk, image_size, tuple(history_offsets)

    def metadata(self) -> dict:
        return {"name": "random", "image_size": self._image_size, "history_offsets": list(self._offsets),
                "action_dim": ACTION_DIM, "chunk": self.chunk}

    def reset(self) -> None:
        pass

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        return native_to_padded(np.random.default_rng(seed).uniform(-1.0, 1.0, (self.chunk, NATIVE_DIM)))
