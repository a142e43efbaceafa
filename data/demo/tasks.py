"""Task families of the demo world: templated instructions, sampling of initial layouts, success predicates.

Coordinates are table units: the table is the square [0, 1]², x to the right, y downwards (image convention).
Blocks are axis-aligned squares of half-size ``BLOCK_HALF`` whose centres stay inside the play area
[``PLAY_MIN``, ``PLAY_MAX``]² (the table has a raised rim); the effector is a disc of radius ``EFFECTOR_RADIUS``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.lookup import check_names

BLOCK_HALF = 0.05
EFFECTOR_RADIUS = 0.04
PLAY_MIN, PLAY_MAX = 0.14, 0.86  # block-centre bounds: leaves room for the effector between block and rim
EFF_MIN, EFF_MAX = EFFECTOR_RADIUS, 1.0 - EFFECTOR_RADIUS

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
MAX_BLOCKS = len(COLORS)

REGIONS: dict[str, tuple[float, float]] = {
    "top left corner": (0.22, 0.22),
    "top right corner": (0.78, 0.22),
    "bottom left corner": (0.22, 0.78),
    "bottom right corner": (0.78, 0.78),
    "top edge": (0.5, 0.2),
    "bottom edge": (0.5, 0.8),
    "left edge": (0.2, 0.5),
    "right edge": (0.8, 0.5),
    "centre": (0.5, 0.5),
}
REGION_RADIUS = 0.1  # success: block centre within this distance of the region's point
NEXT_TO_DIST = 0.16  # success: centres closer than this (touching blocks are 0.10–0.14 apart)
SEPARATE_DIST = 0.4  # success: centres farther apart than this
TOUCH_GAP = 0.01  # touch_block success: the effector disc is within this gap of the named block's square
PUSH_DIST = 0.12  # push_direction success: the block moved at least this far along the named direction
DIRECTIONS: dict[str, tuple[float, float]] = {  # y grows downwards (image convention), so "up" is -y
    "to the left": (-1.0, 0.0), "to the right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Families from the shortest horizon to the longest (the difficulty ladder): touch_block (~5-15 steps: reach the
# named block among the others; language + vision, no pushing), push_direction (~10-25 steps: one short push of the
# named block), then the multi-contact pushes (~30-60 steps).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "touch_block": (
        "touch the {a} block",
        "reach the {a} block",
        "move to the {a} block",
        "go to the {a} block",
    ),
    "push_direction": (
        "push the {a} block {direction}",
        "move the {a} block {direction}",
        "slide the {a} block {direction}",
        "nudge the {a} block {direction}",
    ),
    "push_to_region": (
        "push the {a} block to the {region}",
        "move the {a} block to the {region}",
        "slide the {a} block into the {region}",
        "put the {a} block in the {region}",
    ),
    "push_next_to": (
        "push the {a} block next to the {b} block",
        "move the {a} block next to the {b} one",
        "put the {a} block beside the {b} block",
        "bring the {a} block close to the {b} block",
    ),
    "separate": (
        "separate the {a} and {b} blocks",
        "push the {a} block away from the {b} block",
        "move the {a} and {b} blocks apart",
        "pull the {a} block and the {b} block apart",
    ),
}
TASK_FAMILIES: tuple[str, ...] = tuple(TEMPLATES)
# Episode step limit per family (the world's max_steps caps it further): about 3x the expert's mean length, so a
# random walk does not reach short goals by chance.
MAX_STEPS: dict[str, int] = {"touch_block": 40, "push_direction": 50, "push_to_region": 120, "push_next_to": 120,
                             "separate": 120}
LONG_FAMILIES: tuple[str, ...] = ("push_to_region", "push_next_to", "separate")  # the original three


def box_gap(point: np.ndarray, centre: np.ndarray) -> float:
    """Distance from the effector disc at ``point`` to the block square at ``centre`` (0 when they overlap)."""
    closest = np.clip(point, centre - BLOCK_HALF, centre + BLOCK_HALF)
    return max(0.0, float(np.linalg.norm(point - closest)) - EFFECTOR_RADIUS)


@dataclasses.dataclass(frozen=True)
class Task:
    """One episode's goal. ``a``/``b`` index into ``COLORS``; ``region`` names a key of ``REGIONS``; ``direction``
    a key of ``DIRECTIONS`` and ``start`` block a's initial centre (push_direction)."""

    family: str
    a: int
    b: int | None
    region: str | None
    instruction: str
    direction: str | None = None
    start: tuple[float, float] | None = None

    def success(self, blocks: np.ndarray, effector: np.ndarray | None = None) -> bool:
        """Whether the goal holds for block centres ``blocks`` float[MAX_BLOCKS, 2] (and the effector float[2],
        needed by touch_block)."""
        pa = blocks[self.a]
        if self.family == "touch_block":
            if effector is None:
                raise ValueError("touch_block success needs the effector position")
            return box_gap(np.asarray(effector, float), pa) < TOUCH_GAP
        if self.family == "push_direction":
            return self._pushed(pa) >= PUSH_DIST
        if self.family == "push_to_region":
            return bool(np.linalg.norm(pa - np.asarray(REGIONS[self.region])) < REGION_RADIUS)
        dist = float(np.linalg.norm(pa - blocks[self.b]))
        if self.family == "push_next_to":
            return dist < NEXT_TO_DIST
        return dist > SEPARATE_DIST

    def _pushed(self, pa: np.ndarray) -> float:
        return float((pa - np.asarray(self.start)) @ np.asarray(DIRECTIONS[self.direction]))

    def progress(self, blocks: np.ndarray, effector: np.ndarray, blocks0: np.ndarray, effector0: np.ndarray) -> float:
        """Continuous score in [0, 1]: the fraction of the way from the initial state (``blocks0``, ``effector0``) to
        the success threshold that the current state covers; 1 exactly when the goal holds, 0 for no progress or
        for moving the wrong way.

        touch_block: effector-to-block gap removed, (g0 - g) / (g0 - TOUCH_GAP); push_direction: displacement along
        the direction over PUSH_DIST; push_to_region: distance to the region point removed, (d0 - d) / (d0 -
        REGION_RADIUS); push_next_to: (d0 - d) / (d0 - NEXT_TO_DIST) on the pair's centre distance; separate: the
        fraction of the required gap gained, (d - d0) / (SEPARATE_DIST - d0)."""
        if self.success(blocks, effector):
            return 1.0
        pa, pa0 = blocks[self.a], blocks0[self.a]
        if self.family == "touch_block":
            g0, g = box_gap(np.asarray(effector0, float), pa0), box_gap(np.asarray(effector, float), pa)
            frac = (g0 - g) / max(g0 - TOUCH_GAP, 1e-9)
        elif self.family == "push_direction":
            frac = self._pushed(pa) / PUSH_DIST
        elif self.family == "push_to_region":
            goal = np.asarray(REGIONS[self.region])
            d0, d = float(np.linalg.norm(pa0 - goal)), float(np.linalg.norm(pa - goal))
            frac = (d0 - d) / max(d0 - REGION_RADIUS, 1e-9)
        else:
            d0, d = float(np.linalg.norm(pa0 - blocks0[self.b])), float(np.linalg.norm(pa - blocks[self.b]))
            if self.family == "push_next_to":
                frac = (d0 - d) / max(d0 - NEXT_TO_DIST, 1e-9)
            else:
                frac = (d - d0) / max(SEPARATE_DIST - d0, 1e-9)
        return float(np.clip(frac, 0.0, 1.0 - 1e-6))  # below 1: only success scores 1


def check_families(families: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate task family names; an unknown one raises with the closest valid name."""
    if not families:
        raise ValueError(f"no task family given: expected some of {', '.join(TASK_FAMILIES)}")
    check_names(families, TASK_FAMILIES, "task")  # UnknownName is a ValueError
    return tuple(families)


def _place(
    rng: np.random.Generator, placed: list[np.ndarray], lo: float = PLAY_MIN, hi: float = PLAY_MAX
) -> np.ndarray:
    """Uniform block centre in [lo, hi]² at least 0.17 (centre to centre) from every placed block."""
    for _ in range(1000):
        p = rng.uniform(lo, hi, size=2)
        if all(np.linalg.norm(p - q) > 0.17 for q in placed):
            return p
    raise RuntimeError("could not place a block without overlap")  # unreachable for <= 4 blocks


def sample_layout(
    rng: np.random.Generator, families: tuple[str, ...]
) -> tuple[Task, np.ndarray, np.ndarray, np.ndarray]:
    """Draw a task and an initial layout in which the goal does not hold yet.

    Returns:
      task, blocks float32[MAX_BLOCKS, 2] (absent blocks parked at -1), present bool[MAX_BLOCKS],
      effector float32[2].
    """
    family = families[rng.integers(len(families))]
    n = int(rng.integers(2, MAX_BLOCKS + 1))
    ids = sorted(rng.choice(MAX_BLOCKS, size=n, replace=False).tolist())
    a, b = (int(i) for i in rng.choice(ids, size=2, replace=False))
    if family in ("touch_block", "push_direction"):
        return _sample_short(rng, family, ids, a)
    while True:
        pos: dict[int, np.ndarray] = {}
        region = None
        if family == "separate":
            pos[b] = rng.uniform(0.3, 0.7, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            pos[a] = pos[b] + rng.uniform(0.15, 0.19) * np.array([np.cos(angle), np.sin(angle)])
            if not np.all((pos[a] >= PLAY_MIN) & (pos[a] <= PLAY_MAX)):
                continue
        for i in ids:
            if i not in pos:
                pos[i] = _place(rng, list(pos.values()))
        if family == "push_to_region":
            region = list(REGIONS)[rng.integers(len(REGIONS))]
        template = TEMPLATES[family][rng.integers(len(TEMPLATES[family]))]
        task = Task(family, a, None if family == "push_to_region" else b, region,
                    template.format(a=COLORS[a], b=COLORS[b], region=region))
        blocks = _blocks_array(pos)
        if family == "push_to_region" and np.linalg.norm(blocks[a] - REGIONS[region]) < REGION_RADIUS + 0.1:
            continue
        if family == "push_next_to" and np.linalg.norm(blocks[a] - blocks[b]) < 0.3:
            continue
        if task.success(blocks):
            continue
        break
    present = np.zeros(MAX_BLOCKS, bool)
    present[ids] = True
    return task, blocks, present, _place_effector(rng, blocks, present)


def _blocks_array(pos: dict[int, np.ndarray]) -> np.ndarray:
    blocks = np.full((MAX_BLOCKS, 2), -1.0, np.float32)
    for i, p in pos.items():
        blocks[i] = p
    return blocks


def _place_effector(rng: np.random.Generator, blocks: np.ndarray, present: np.ndarray,
                    ok=lambda eff: True) -> np.ndarray:
    """Uniform effector start clear of every block (and accepted by ``ok``), float32[2]."""
    for _ in range(1000):
        eff = rng.uniform(EFF_MIN + 0.05, EFF_MAX - 0.05, size=2)
        gap = np.abs(blocks[present] - eff).max(axis=1)
        if np.all(gap > BLOCK_HALF + EFFECTOR_RADIUS + 0.02) and ok(eff):
            break
    return eff.astype(np.float32)


def _sample_short(rng: np.random.Generator, family: str, ids: list[int],
                  a: int) -> tuple[Task, np.ndarray, np.ndarray, np.ndarray]:
    """The short-horizon families. touch_block: the effector starts 0.2-0.45 from the named block's square.
    push_direction: the named block's path (PUSH_DIST + margin along the direction) and the spot behind it are free
    of other blocks and inside the play area, and the effector starts within 0.35 of that spot."""
    present = np.zeros(MAX_BLOCKS, bool)
    present[ids] = True
    template = TEMPLATES[family][rng.integers(len(TEMPLATES[family]))]
    while True:
        pos: dict[int, np.ndarray] = {}
        for i in ids:
            pos[i] = _place(rng, list(pos.values()))
        blocks = _blocks_array(pos)
        pa = blocks[a].astype(float)
        if family == "touch_block":
            eff = _place_effector(rng, blocks, present, ok=lambda e, pa=pa: 0.2 <= box_gap(e, pa) <= 0.45)
            if not 0.2 <= box_gap(eff.astype(float), pa) <= 0.45:
                continue
            return Task(family, a, None, None, template.format(a=COLORS[a])), blocks, present, eff
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        u = np.asarray(DIRECTIONS[direction])
        reach = PUSH_DIST + 0.04
        end = pa + u * reach
        spot = pa - u * (BLOCK_HALF + EFFECTOR_RADIUS + 0.015)
        if not (np.all((end >= PLAY_MIN) & (end <= PLAY_MAX)) and np.all((spot >= EFF_MIN) & (spot <= EFF_MAX))):
            continue
        clear = True
        for i in ids:
            rel = blocks[i] - pa
            along, across = float(rel @ u), float(abs(rel @ u[::-1]))
            if i != a and across < 2 * BLOCK_HALF + 0.03 and -0.2 < along < reach + 2 * BLOCK_HALF + 0.02:
                clear = False
        if not clear:
            continue
        eff = _place_effector(rng, blocks, present, ok=lambda e, spot=spot: np.linalg.norm(e - spot) <= 0.35)
        if np.linalg.norm(eff - spot) > 0.35:
            continue
        task = Task(family, a, None, None, template.format(a=COLORS[a], direction=direction), direction=direction,
                    start=(float(pa[0]), float(pa[1])))
        return task, blocks, present, eff
