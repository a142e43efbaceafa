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

TEMPLATES: dict[str, tuple[str, ...]] = {
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


@dataclasses.dataclass(frozen=True)
class Task:
    """One episode's goal. ``a``/``b`` index into ``COLORS``; ``region`` names a key of ``REGIONS``."""

    family: str
    a: int
    b: int | None
    region: str | None
    instruction: str

    def success(self, blocks: np.ndarray) -> bool:
        """Whether the goal holds for block centres ``blocks`` float[MAX_BLOCKS, 2]."""
        pa = blocks[self.a]
        if self.family == "push_to_region":
            return bool(np.linalg.norm(pa - np.asarray(REGIONS[self.region])) < REGION_RADIUS)
        dist = float(np.linalg.norm(pa - blocks[self.b]))
        if self.family == "push_next_to":
            return dist < NEXT_TO_DIST
        return dist > SEPARATE_DIST


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
        blocks = np.full((MAX_BLOCKS, 2), -1.0, np.float32)
        for i, p in pos.items():
            blocks[i] = p
        if family == "push_to_region" and np.linalg.norm(blocks[a] - REGIONS[region]) < REGION_RADIUS + 0.1:
            continue
        if family == "push_next_to" and np.linalg.norm(blocks[a] - blocks[b]) < 0.3:
            continue
        if task.success(blocks):
            continue
        break
    present = np.zeros(MAX_BLOCKS, bool)
    present[ids] = True
    for _ in range(1000):
        eff = rng.uniform(EFF_MIN + 0.05, EFF_MAX - 0.05, size=2)
        gap = np.abs(blocks[present] - eff).max(axis=1)
        if np.all(gap > BLOCK_HALF + EFFECTOR_RADIUS + 0.02):
            break
    return task, blocks, present, eff.astype(np.float32)
