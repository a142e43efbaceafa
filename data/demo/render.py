"""Antialiased top-down renderer of the demo world and its exact optical flow.

Every object is a signed-distance shape; a pixel's coverage is ``clip(0.5 - sdf_in_pixels, 0, 1)``, so sub-pixel
motion changes edge pixels smoothly. Objects only translate (their textures are fixed in object coordinates), so the
flow of a pixel is the displacement of the top-most object covering it (plus the camera shift), which is exact.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from data.demo.tasks import BLOCK_HALF, EFFECTOR_RADIUS, MAX_BLOCKS, PLAY_MAX, PLAY_MIN

BORDER = 0.04  # fraction of the image on each side showing the floor around the table
BLOCK_COLORS = np.array([[0.86, 0.16, 0.13], [0.16, 0.66, 0.22], [0.17, 0.32, 0.86], [0.93, 0.80, 0.12]])
DISTRACTOR_RADIUS = 0.045
# layer ids of the per-pixel object map: 0 table/floor, 1.. distractors, 10 + i block i, 20 effector
BLOCK_ID, EFFECTOR_ID = 10, 20


@dataclasses.dataclass
class Scene:
    """What the camera sees: positions in table units, camera shift in pixels, effector look."""

    effector: np.ndarray  # float[2]
    blocks: np.ndarray  # float[MAX_BLOCKS, 2]
    present: np.ndarray  # bool[MAX_BLOCKS]
    distractors: np.ndarray  # float[K, 2]
    jitter: np.ndarray  # float[2], pixels
    embodiment: str = "robot"


def _scale(resolution: int) -> float:
    return resolution * (1 - 2 * BORDER)


def table_to_pixels(pos: np.ndarray, resolution: int) -> np.ndarray:
    """Table coordinates float[..., 2] (x right, y down, table = [0, 1]^2) → pixels of an unjittered frame
    (x right, y down; pixel i spans [i, i + 1)), the inverse of `_grid`."""
    return (np.asarray(pos) * _scale(resolution) + resolution * BORDER).astype(np.float32)


def _grid(resolution: int, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table coordinates (x, y) of every pixel centre, each float[R, R]."""
    s, o = _scale(resolution), resolution * BORDER
    c = np.arange(resolution) + 0.5
    x = (c - o - jitter[0]) / s
    y = (c - o - jitter[1]) / s
    return np.broadcast_to(x[None, :], (resolution,) * 2), np.broadcast_to(y[:, None], (resolution,) * 2)


def _box(x: np.ndarray, y: np.ndarray, half: tuple[float, float], radius: float = 0.0) -> np.ndarray:
    qx, qy = np.abs(x) - (half[0] - radius), np.abs(y) - (half[1] - radius)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _capsule(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float], r: float) -> np.ndarray:
    ax, ay, bx, by = *a, *b
    t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(x - ax - t * (bx - ax), y - ay - t * (by - ay)) - r


def _effector_layers(x: np.ndarray, y: np.ndarray, embodiment: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sdf, rgb) parts of the effector in its own coordinates, drawn in order."""
    if embodiment == "robot":  # grey gripper seen from above: body, dark hub, two light fingers
        body = np.hypot(x, y) - EFFECTOR_RADIUS
        hub = np.hypot(x, y) - 0.021
        fingers = np.minimum(_box(x - 0.021, y, (0.006, 0.017), 0.002), _box(x + 0.021, y, (0.006, 0.017), 0.002))
        return [(body, np.array([0.52, 0.54, 0.58])), (hub, np.array([0.30, 0.31, 0.35])),
                (fingers, np.array([0.80, 0.81, 0.84]))]
    skin = np.array([0.70, 0.42, 0.30])  # hand seen from above: palm, four fingers, thumb
    palm = _box(x, y - 0.01, (0.026, 0.022), 0.012)
    fingers = np.min([_capsule(x, y, (dx, -0.008), (dx, -0.04 + abs(dx) * 0.4), 0.0062)
                      for dx in (-0.019, -0.0065, 0.0065, 0.019)], axis=0)
    thumb = _capsule(x, y, (-0.022, 0.016), (-0.04, -0.002), 0.0068)
    nails = np.min([np.hypot(x - dx, y + 0.036 - abs(dx) * 0.4) - 0.003 for dx in (-0.019, -0.0065, 0.0065, 0.019)],
                   axis=0)
    return [(np.minimum(np.minimum(palm, fingers), thumb), skin), (nails, np.array([0.93, 0.80, 0.74]))]


@functools.lru_cache(maxsize=8)
def _background(resolution: int, jx: float, jy: float) -> np.ndarray:
    """Floor, table (wood grain) and the rim of the play area: float[R, R, 3], cached per camera shift."""
    s = _scale(resolution)
    x, y = _grid(resolution, np.array([jx, jy]))

    def cover(sdf: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - sdf * s, 0.0, 1.0)[..., None]

    grain = 1 + 0.05 * np.sin(2 * np.pi * (7 * x + 0.25 * np.sin(9 * y))) + 0.03 * np.sin(2 * np.pi * 23 * y)
    img = np.broadcast_to(np.array([0.2, 0.19, 0.18]), (resolution, resolution, 3)).copy()
    table = cover(_box(x - 0.5, y - 0.5, (0.5, 0.5), 0.01))
    img = img * (1 - table) + np.array([0.80, 0.70, 0.54]) * grain[..., None] * table
    rim = cover(np.abs(_box(x - 0.5, y - 0.5, ((PLAY_MAX - PLAY_MIN) / 2 + BLOCK_HALF,) * 2, 0.02)) - 0.003)
    img = img * (1 - rim) + np.array([0.58, 0.48, 0.36]) * rim
    img.setflags(write=False)
    return img


def render(scene: Scene, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene``. Returns (image uint8[R, R, 3], object id map int8[R, R] of the top-most object).

    Each object is drawn only inside its pixel bounding box (plus an antialiasing margin).
    """
    s = _scale(resolution)
    x, y = _grid(resolution, scene.jitter)
    img = _background(resolution, float(scene.jitter[0]), float(scene.jitter[1])).copy()
    ids = np.zeros((resolution, resolution), np.int8)

    def window(centre: np.ndarray, extent: float) -> tuple[slice, slice]:
        lo = np.floor((centre - extent) * s + resolution * BORDER + scene.jitter - 2).astype(int)
        hi = np.ceil((centre + extent) * s + resolution * BORDER + scene.jitter + 2).astype(int)
        lo, hi = np.clip(lo, 0, resolution), np.clip(hi, 0, resolution)
        return slice(lo[1], hi[1]), slice(lo[0], hi[0])  # (rows = y, cols = x)

    def paint(win: tuple[slice, slice], sdf: np.ndarray, rgb: np.ndarray, layer: int | None) -> None:
        c = np.clip(0.5 - sdf * s, 0.0, 1.0)[..., None]
        img[win] = img[win] * (1 - c) + rgb * c
        if layer is not None:
            ids[win][c[..., 0] >= 0.5] = layer

    for k, centre in enumerate(scene.distractors):
        win = window(centre, DISTRACTOR_RADIUS)
        r2 = ((x[win] - centre[0]) ** 2 + (y[win] - centre[1]) ** 2) / DISTRACTOR_RADIUS**2
        rgb = np.array([0.56, 0.42, 0.72]) * (1.05 - 0.3 * np.minimum(r2, 1))[..., None]
        paint(win, np.sqrt(r2) * DISTRACTOR_RADIUS - DISTRACTOR_RADIUS, rgb, 1 + k)

    for i in np.flatnonzero(scene.present):
        win = window(scene.blocks[i], BLOCK_HALF)
        lx, ly = x[win] - scene.blocks[i, 0], y[win] - scene.blocks[i, 1]
        sdf = _box(lx, ly, (BLOCK_HALF, BLOCK_HALF), 0.012)
        bevel = np.clip((sdf + 0.009) * s + 0.5, 0.0, 1.0)  # antialiased darker rim inside the block
        shade = 0.8 + 0.2 * (lx - ly + 2 * BLOCK_HALF) / (2 * BLOCK_HALF) - 0.12 * bevel
        paint(win, sdf, BLOCK_COLORS[i] * shade[..., None], BLOCK_ID + i)

    win = window(scene.effector, EFFECTOR_RADIUS * 1.2)
    parts = _effector_layers(x[win] - scene.effector[0], y[win] - scene.effector[1], scene.embodiment)
    for n, (sdf, rgb) in enumerate(parts):
        paint(win, sdf, rgb, EFFECTOR_ID if n == 0 else None)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), ids


def flow(before: Scene, after: Scene, resolution: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Forward optical flow float32[R, R, 2] (dx, dy in pixels) from the frame of ``before`` to that of ``after``.

    Each pixel moves with the top-most object covering it in ``before``; the table and floor move with the camera.
    ``ids`` is the object map ``render(before)`` returned, if the caller already has it.
    """
    s = _scale(resolution)
    if ids is None:
        ids = render(before, resolution)[1]
    shift = np.asarray(after.jitter, np.float64) - np.asarray(before.jitter, np.float64)
    table = np.zeros((256, 2))
    table[:] = shift  # lookup indexed by object id (int8 >= 0)
    for k in range(len(before.distractors)):
        table[1 + k] += (after.distractors[k] - before.distractors[k]) * s
    for i in range(MAX_BLOCKS):
        table[BLOCK_ID + i] += (after.blocks[i] - before.blocks[i]) * s
    table[EFFECTOR_ID] += (after.effector - before.effector) * s
    return table[ids.astype(np.int64)].astype(np.float32)
