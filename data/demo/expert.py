"""Scripted expert (privileged state, axis-by-axis pushing with obstacle avoidance) and a random policy.

The expert decides which block to move where (``plan``), then pushes it along one axis at a time from the face
opposite the push direction, walking around blocks to reach that face. Gaussian action noise makes demonstrations
diverse; the noise and the plan are seeded, so an episode is a function of (env seed, expert seed).
"""

from __future__ import annotations

import numpy as np

from data.demo import tasks as tasks_lib
from data.demo.tasks import BLOCK_HALF, EFF_MAX, EFF_MIN, EFFECTOR_RADIUS, PLAY_MAX, PLAY_MIN, REGIONS
from data.demo.world import MAX_STEP, DemoWorld

CONTACT = BLOCK_HALF + EFFECTOR_RADIUS  # effector-centre to block-centre distance when touching a face
TOL = 0.015  # goal tolerance per axis


def _segment_hits_box(start: np.ndarray, end: np.ndarray, centre: np.ndarray, half: float) -> float | None:
    """Entry fraction in (0, 1] where segment start→end enters the open square, or None (also if start is inside)."""
    d = end - start
    t0, t1 = 0.0, 1.0
    for k in range(2):
        lo, hi = centre[k] - half - start[k], centre[k] + half - start[k]
        if abs(d[k]) < 1e-12:
            if lo >= 0 or hi <= 0:
                return None
            continue
        a, b = lo / d[k], hi / d[k]
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
        if t0 >= t1:
            return None
    return t0 if t0 > 0 else None


class ScriptedExpert:
    """Closed-loop expert for every task family. Call ``reset(env)`` after ``env.reset``, then ``act(env)``."""

    def __init__(self, noise: float = 0.003, seed: int = 0) -> None:
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self._axis: int | None = None
        self._clear: tuple[int, np.ndarray] | None = None
        self._mover = 0
        self._goal = np.zeros(2)

    def reset(self, env: DemoWorld, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._axis, self._clear = None, None
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._stuck, self._escape = 0, (0, np.zeros(2))
        self._plan(env)

    # ------------------------------------------------------------------------------------------------------ plan
    def _plan(self, env: DemoWorld) -> None:
        task, blocks = env.task, env.blocks
        if task.family == "touch_block":
            self._mover, self._goal = task.a, blocks[task.a].astype(float)
        elif task.family == "push_direction":
            u = np.asarray(tasks_lib.DIRECTIONS[task.direction])
            self._mover, self._goal = task.a, np.asarray(task.start) + u * (tasks_lib.PUSH_DIST + 0.03)
        elif task.family == "push_to_region":
            self._mover, self._goal = task.a, np.asarray(REGIONS[task.region], float)
        elif task.family == "push_next_to":
            self._mover, self._goal = task.a, self._beside(blocks[task.a], blocks[task.b])
        else:  # separate: cheapest (mover, goal) that leaves the pair far enough apart
            best = None
            for mover, other in ((task.a, task.b), (task.b, task.a)):
                for goal in REGIONS.values():
                    goal = np.asarray(goal, float)
                    if np.linalg.norm(goal - blocks[other]) < tasks_lib.SEPARATE_DIST + 0.06:
                        continue
                    cost = np.abs(goal - blocks[mover]).sum()
                    err = goal - blocks[mover]
                    k = int(np.argmax(np.abs(err)))
                    spot = blocks[mover] - np.sign(err[k]) * np.eye(2)[k] * (CONTACT + 0.015)
                    cost += 0.5 * (self._blocker(spot, blocks, env.present, mover) is not None)
                    if best is None or cost < best[0]:
                        best = (cost, mover, goal)
            self._mover, self._goal = best[1], best[2]

    @staticmethod
    def _beside(mover: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """The spot next to ``anchor`` (one of its four sides, inside the play area) closest to ``mover``."""
        gap = 2 * BLOCK_HALF + 0.015
        spots = [anchor + gap * np.array(d) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        spots = [p for p in spots if np.all((p >= PLAY_MIN) & (p <= PLAY_MAX))]
        return min(spots, key=lambda p: np.abs(p - mover).sum())

    # ------------------------------------------------------------------------------------------------------- act
    def act(self, env: DemoWorld) -> np.ndarray:
        """Next action float32[2] (already clipped)."""
        if env.task.family == "push_next_to":
            self._goal = self._beside(env.blocks[self._mover], env.blocks[env.task.b])
        eff = env.effector.copy()
        if self._last is not None and np.linalg.norm(eff - self._last[0]) < 0.002 \
                and np.linalg.norm(self._last[1]) > 0.01:
            self._stuck += 1
        else:
            self._stuck = 0
        if self._stuck >= 2 and self._escape[0] == 0:  # wedged between blocks: back off in a random direction
            angle = self._rng.uniform(0, 2 * np.pi)
            self._escape = (4, MAX_STEP * np.array([np.cos(angle), np.sin(angle)]))
        if self._escape[0] > 0:
            a = self._escape[1]
            self._escape = (self._escape[0] - 1, a)
            self._axis = None
        elif env.task.family == "touch_block":
            a = self._touch(eff, env.blocks, env.present, env.task.a)
        else:
            a = self._control(eff, env.blocks, env.present)
        self._last = (eff, a)
        a = a + self._rng.normal(0, self.noise, 2)
        return np.clip(a, -MAX_STEP, MAX_STEP).astype(np.float32)

    def _touch(self, eff: np.ndarray, blocks: np.ndarray, present: np.ndarray, target: int) -> np.ndarray:
        """Walk to the nearest face of block ``target`` (other blocks are walked around)."""
        block = blocks[target]
        d = eff - block
        k = int(np.argmax(np.abs(d)))
        spot = block.astype(float).copy()
        spot[k] += np.sign(d[k]) * (CONTACT + 0.004)
        spot[1 - k] += np.clip(d[1 - k], -BLOCK_HALF * 0.5, BLOCK_HALF * 0.5)
        return self._navigate(eff, spot, blocks, present)

    @staticmethod
    def _blocker(spot: np.ndarray, blocks: np.ndarray, present: np.ndarray, mover: int) -> int | None:
        """The block (other than ``mover``) that leaves no room for the effector at ``spot``, if any."""
        for i in np.flatnonzero(present):
            if i != mover and np.all(np.abs(spot - blocks[i]) < CONTACT):
                return int(i)
        return None

    def _in_the_way(self, k: int, err: np.ndarray, block: np.ndarray, blocks: np.ndarray, present: np.ndarray,
                    mover: int) -> int | None:
        """A block that occupies the push spot for axis ``k`` or lies on the block's path along it, if any."""
        sign = np.sign(err[k])
        found = self._blocker(block - sign * np.eye(2)[k] * (CONTACT + 0.015), blocks, present, mover)
        if found is not None:
            return found
        for i in np.flatnonzero(present):
            ahead = (blocks[i, k] - block[k]) * sign
            if i != mover and abs(blocks[i, 1 - k] - block[1 - k]) < 2 * BLOCK_HALF + 0.01 \
                    and 0 < ahead < abs(err[k]) + 2 * BLOCK_HALF + 0.01:
                return int(i)
        return None

    def _control(self, eff: np.ndarray, blocks: np.ndarray, present: np.ndarray) -> np.ndarray:
        if self._clear is not None:  # first move a block that sits where the effector must stand
            mover, goal = self._clear
            if np.abs(goal - blocks[mover]).max() <= TOL:
                self._clear, self._axis = None, None
        mover, goal = self._clear or (self._mover, self._goal)
        block = blocks[mover]
        err = goal - block
        axes = sorted((k for k in (0, 1) if abs(err[k]) > TOL), key=lambda k: (k != self._axis, -abs(err[k])))
        if not axes:
            return np.zeros(2)
        blockers = {k: self._in_the_way(k, err, block, blocks, present, mover) for k in axes}
        free = [k for k in axes if blockers[k] is None]
        if not free and self._clear is None:
            other = blockers[axes[0]]
            side = blocks[other] - block
            k = 1 - axes[0]  # slide the blocker sideways, away from the mover, by two block widths
            shift = np.eye(2)[k] * (np.sign(side[k]) or 1.0) * 0.2
            target = np.clip(blocks[other] + shift, PLAY_MIN, PLAY_MAX)
            if np.abs(target - blocks[other]).max() < 0.1:
                target = np.clip(blocks[other] - shift, PLAY_MIN, PLAY_MAX)
            self._clear, self._axis = (other, target), None
            return self._control(eff, blocks, present)
        self._axis = ax = (free or axes)[0]
        other = 1 - ax
        u = np.zeros(2)
        u[ax] = np.sign(err[ax])
        behind = -(eff - block) @ u  # how far the effector is behind the block's centre along u
        aligned = abs(eff[other] - block[other]) < 0.02
        if aligned and CONTACT - 0.01 <= behind <= CONTACT + 0.035:
            step = min(MAX_STEP, behind - CONTACT + abs(err[ax]))
            a = u * step
            a[other] = np.clip(block[other] - eff[other], -0.01, 0.01)
            return a
        return self._navigate(eff, block - u * (CONTACT + 0.015), blocks, present)

    def _navigate(self, eff: np.ndarray, target: np.ndarray, blocks: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Step towards ``target``: straight if nothing is in the way, else along a shortest grid path."""
        margin = CONTACT - 0.002
        near = [i for i in np.flatnonzero(present) if np.all(np.abs(eff - blocks[i]) < margin)]
        if near:  # inside a block's margin (at its rounded corner): step out along the larger offset
            d = eff - blocks[near[0]]
            out = np.zeros(2)
            out[int(np.argmax(np.abs(d)))] = np.sign(d[int(np.argmax(np.abs(d)))]) * MAX_STEP
            return out
        if any(_segment_hits_box(eff, target, blocks[i], margin) is not None for i in np.flatnonzero(present)):
            target = _grid_waypoint(eff, target, blocks[present], margin)
        d = target - eff
        n = float(np.linalg.norm(d))
        return d if n <= MAX_STEP else d / n * MAX_STEP


_GRID = 48
_CELLS = (np.arange(_GRID) + 0.5) / _GRID


def _grid_waypoint(eff: np.ndarray, target: np.ndarray, blocks: np.ndarray, margin: float) -> np.ndarray:
    """Waypoint a few cells along a shortest 8-connected path on a grid whose blocked cells are inside a margin."""
    cx, cy = np.meshgrid(_CELLS, _CELLS, indexing="ij")
    free = (cx >= EFF_MIN) & (cx <= EFF_MAX) & (cy >= EFF_MIN) & (cy <= EFF_MAX)
    for b in blocks:
        free &= ~((np.abs(cx - b[0]) < margin) & (np.abs(cy - b[1]) < margin))

    def cell(p: np.ndarray) -> tuple[int, int]:
        i, j = np.clip((p * _GRID).astype(int), 0, _GRID - 1)
        if not free[i, j]:  # nearest free cell
            k = np.argmin(np.where(free, (cx - p[0]) ** 2 + (cy - p[1]) ** 2, np.inf))
            i, j = np.unravel_index(k, free.shape)
        return int(i), int(j)

    goal, start = cell(target), cell(eff)
    dist = np.full(free.shape, np.inf)
    dist[goal] = 0.0
    shifts = [(di, dj, np.hypot(di, dj)) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    for _ in range(4 * _GRID):  # wavefront relaxation
        padded = np.pad(dist, 1, constant_values=np.inf)
        best = dist.copy()
        for di, dj, w in shifts:
            best = np.minimum(best, padded[1 + di:1 + di + _GRID, 1 + dj:1 + dj + _GRID] + w)
        best = np.where(free, best, np.inf)
        if np.array_equal(best, dist) or np.isfinite(dist[start]):
            dist = best
            break
        dist = best
    if not np.isfinite(dist[start]):
        return target
    i, j = start
    for _ in range(3):  # walk three cells downhill
        options = [(dist[i + di, j + dj], i + di, j + dj) for di, dj, _ in shifts
                   if 0 <= i + di < _GRID and 0 <= j + dj < _GRID]
        _, i, j = min(options)
    return np.array([_CELLS[i], _CELLS[j]])


class RandomPolicy:
    """Uniform random actions in [-MAX_STEP, MAX_STEP]²."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self, env: DemoWorld, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def act(self, env: DemoWorld) -> np.ndarray:
        return self._rng.uniform(-MAX_STEP, MAX_STEP, 2).astype(np.float32)


def rollout(env: DemoWorld, policy: ScriptedExpert | RandomPolicy, seed: int) -> tuple[bool, int]:
    """Run one episode to success or the step limit. Returns (success, number of steps)."""
    env.reset(seed=seed)
    policy.reset(env, seed=seed + 1_000_003)
    while True:
        _, _, terminated, truncated, _ = env.step(policy.act(env))
        if terminated or truncated:
            return env.success, env.steps
