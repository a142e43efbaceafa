"""The demo world: a planar pushing table with a Gymnasium-style interface.

An effector (a disc) moves by clipped 2-D deltas and pushes axis-aligned square blocks with quasi-static,
non-penetrating contact: a block moves only when the effector or another moving block touches it, never rotates, and
stays inside the play area. See ``tasks.py`` for the geometry constants and task families, ``render.py`` for images
and exact optical flow.

    env = DemoWorld(WorldConfig(resolution=64))
    obs, info = env.reset(seed=0)            # obs: {"image": uint8[R, R, 3], "state": float32[2]}
    obs, reward, terminated, truncated, info = env.step(np.array([0.02, -0.01]))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data.demo import render as render_lib
from data.demo import tasks as tasks_lib
from data.demo.tasks import BLOCK_HALF, EFF_MAX, EFF_MIN, EFFECTOR_RADIUS, PLAY_MAX, PLAY_MIN

MAX_STEP = 0.03  # per-axis clip of an action, table units per step
SUBSTEPS = 4  # contact is resolved after each sub-step of at most MAX_STEP / SUBSTEPS
SUPPORTED_RESOLUTIONS = (64, 128, 256)
EMBODIMENTS = ("robot", "human")
FPS = 10


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Options of the world. ``camera_jitter`` is the std of a per-frame image shift in pixels (0 = off);
    distractors are discs that drift across the table without touching anything (task-irrelevant motion)."""

    resolution: int = 64
    embodiment: str = "robot"
    tasks: tuple[str, ...] = tasks_lib.TASK_FAMILIES
    max_steps: int = 120
    camera_jitter: float = 0.0
    num_distractors: int = 0
    images: bool = True  # render observation images (off for fast success-rate evaluation)

    def __post_init__(self) -> None:
        if self.resolution not in SUPPORTED_RESOLUTIONS:
            raise ValueError(f"unsupported resolution {self.resolution}: expected one of {SUPPORTED_RESOLUTIONS}")
        if self.embodiment not in EMBODIMENTS:
            raise ValueError(f"unknown embodiment {self.embodiment!r}: expected one of {EMBODIMENTS}")
        tasks_lib.check_families(self.tasks)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.camera_jitter < 0 or self.num_distractors < 0:
            raise ValueError("camera_jitter and num_distractors must be >= 0")


def _push_out(circle: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Displacement that moves ``box`` (centre) out of the effector disc at ``circle``; zero if not touching."""
    closest = np.clip(circle, box - BLOCK_HALF, box + BLOCK_HALF)
    v = circle - closest
    dist = float(np.hypot(*v))
    if dist >= EFFECTOR_RADIUS:
        return np.zeros(2)
    if dist > 1e-9:
        return -v / dist * (EFFECTOR_RADIUS - dist)
    d = circle - box  # centre inside the box: leave along the axis of least penetration
    axis = int(np.argmax(np.abs(d)))
    out = np.zeros(2)
    out[axis] = -np.sign(d[axis] or 1.0) * (BLOCK_HALF + EFFECTOR_RADIUS - abs(d[axis]))
    return out


def _box_overlap(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Smallest displacement of ``q`` that separates squares at ``p`` and ``q``; zero if they do not overlap."""
    d = q - p
    pen = 2 * BLOCK_HALF - np.abs(d)
    if np.any(pen <= 0):
        return np.zeros(2)
    axis = int(np.argmin(pen))
    out = np.zeros(2)
    out[axis] = np.sign(d[axis] or 1.0) * pen[axis]
    return out


def _far_near(i: int, j: int, blocks: np.ndarray, eff: np.ndarray) -> tuple[int, int]:
    """(far, near): of two touching blocks, the one farther from the effector (L∞) is the one that yields."""
    return (j, i) if np.abs(blocks[j] - eff).max() >= np.abs(blocks[i] - eff).max() else (i, j)


def resolve_contacts(eff: np.ndarray, blocks: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Resolve contacts after the effector moved to ``eff``; updates ``blocks`` in place, returns the effector.

    The effector pushes blocks; a pushed block pushes the blocks it touches (the one farther from the effector
    yields). Blocks are clamped to the play area; where a clamped block cannot yield, the effector is pushed back.
    """
    idx = np.flatnonzero(present)
    if not np.any(np.all(np.abs(blocks[idx] - eff) < BLOCK_HALF + EFFECTOR_RADIUS, axis=1)):
        return np.clip(eff, EFF_MIN, EFF_MAX)  # touching nothing: blocks at rest never overlap each other
    for _ in range(8):
        moved = False
        for i in idx:
            d = _push_out(eff, blocks[i])
            if d.any():
                blocks[i] += d
                moved = True
        for i in idx:
            for j in idx:
                if i >= j:
                    continue
                far, near = _far_near(i, j, blocks, eff)
                d = _box_overlap(blocks[near], blocks[far])
                if d.any():
                    blocks[far] += d
                    moved = True
        blocks[idx] = np.clip(blocks[idx], PLAY_MIN, PLAY_MAX)
        if not moved:
            break
    for _ in range(4):  # what still overlaps is held by the rim: the near block and then the effector yield
        for i in idx:
            for j in idx:
                if i < j:
                    far, near = _far_near(i, j, blocks, eff)
                    blocks[near] += _box_overlap(blocks[far], blocks[near])
        blocks[idx] = np.clip(blocks[idx], PLAY_MIN, PLAY_MAX)
        for i in idx:
            eff = eff - _push_out(eff, blocks[i])
    return np.clip(eff, EFF_MIN, EFF_MAX)


class DemoWorld:
    """Gymnasium-style planar pushing environment (``reset``, ``step``, ``render``, ``task``, ``success``)."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self._rng = np.random.default_rng(0)
        self.task: tasks_lib.Task | None = None
        self.steps = 0

    # ----------------------------------------------------------------------------------------------------- state
    @property
    def scene(self) -> render_lib.Scene:
        """What the camera sees now (positions, distractors, camera shift)."""
        return render_lib.Scene(self.effector.copy(), self.blocks.copy(), self.present.copy(),
                                self.distractors[:, :2].copy(), self.jitter.copy(), self.config.embodiment)

    @property
    def success(self) -> bool:
        return bool(self.task is not None and self.task.success(self.blocks, self.effector))

    @property
    def progress(self) -> float:
        """Continuous task progress in [0, 1] from the episode's initial state (``tasks.Task.progress``)."""
        if self.task is None:
            return 0.0
        return self.task.progress(self.blocks, self.effector, self._blocks0, self._effector0)

    @property
    def max_steps(self) -> int:
        """This episode's step limit: the family's (``tasks.MAX_STEPS``) capped by ``config.max_steps``."""
        family = self.task.family if self.task is not None else ""
        return min(self.config.max_steps, tasks_lib.MAX_STEPS.get(family, self.config.max_steps))

    def state(self) -> np.ndarray:
        """Proprioception: effector position float32[2]."""
        return self.effector.astype(np.float32).copy()

    def ground_truth(self) -> dict[str, np.ndarray]:
        """Privileged state for evaluation: effector float32[2], blocks float32[4, 2], present bool[4]."""
        return {"effector_pos": self.effector.astype(np.float32), "block_pos": self.blocks.astype(np.float32),
                "block_present": self.present.copy()}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self.state()}
        if self.config.images:
            obs["image"] = self.render()
        return obs

    def _info(self) -> dict[str, Any]:
        return {"instruction": self.task.instruction, "task": self.task.family, "success": self.success,
                "progress": self.progress, "steps": self.steps}

    # ------------------------------------------------------------------------------------------------- interface
    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new episode; the layout, task and all later randomness are a function of ``seed``."""
        self._rng = np.random.default_rng(seed)
        task, blocks, present, eff = tasks_lib.sample_layout(self._rng, self.config.tasks)
        self.task, self.blocks, self.present, self.effector = task, blocks.astype(np.float64), present, eff
        self.effector = self.effector.astype(np.float64)
        self._blocks0, self._effector0 = self.blocks.copy(), self.effector.copy()
        k = self.config.num_distractors
        self.distractors = np.concatenate(
            [self._rng.uniform(0.1, 0.9, (k, 2)), self._rng.normal(0, 0.012, (k, 2))], axis=1)
        self.jitter = self._draw_jitter()
        self.steps = 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply a planar delta (clipped to ±MAX_STEP per axis). Returns (obs, reward, terminated, truncated, info)."""
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 2 finite floats (dx, dy), got {np.asarray(action).tolist()}")
        a = np.clip(a, -MAX_STEP, MAX_STEP)
        for _ in range(SUBSTEPS):
            self.effector = resolve_contacts(np.clip(self.effector + a / SUBSTEPS, EFF_MIN, EFF_MAX),
                                             self.blocks, self.present)
        self._move_distractors()
        self.jitter = self._draw_jitter()
        self.steps += 1
        terminated = self.success
        truncated = not terminated and self.steps >= self.max_steps
        return self._obs(), float(terminated), terminated, truncated, self._info()

    def render(self) -> np.ndarray:
        """RGB uint8[R, R, 3] of the current scene."""
        return render_lib.render(self.scene, self.config.resolution)[0]

    # ------------------------------------------------------------------------------------------------ internals
    def _draw_jitter(self) -> np.ndarray:
        s = self.config.camera_jitter
        return np.clip(self._rng.normal(0, s, 2), -2 * s, 2 * s) if s > 0 else np.zeros(2)

    def _move_distractors(self) -> None:
        d = self.distractors
        d[:, :2] += d[:, 2:]
        for axis in (0, 1):
            out = (d[:, axis] < 0.08) | (d[:, axis] > 0.92)
            d[out, 2 + axis] *= -1
            d[:, axis] = np.clip(d[:, axis], 0.08, 0.92)
