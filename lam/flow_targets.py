"""Optical-flow targets for the LAM's flow term on video without ground truth, estimated on the host.

The demo world records exact per-step flow; real video (OXE RLDS shards) does not, so the input pipeline estimates it
from each pair of consecutive clip frames with a classical dense estimator, the same role a RAFT teacher would play
without needing pretrained weights offline. Two estimators (`ESTIMATORS`, picked by `loss.flow_target`):

- `farneback`: OpenCV's Farnebäck polynomial expansion. Smooth and cheap (~0.7 ms per 64 px pair), but it loses a
  small object that moves about its own size: on the demo world's cluttered video (5 px effector, ~3.8 px per clip
  pair) its mean flow on the effector points into the right 45° sector for 51 % of training clips
  (`python -m lam.flow_check`, docs/lam.md).
- `block_match`: exhaustive SSD block matching over every integer displacement up to `radius` px, a penalty on the
  displacement's length, a parabolic sub-pixel step, and the noise gate below. By default the frames are first
  registered (the camera's shift found by phase correlation and undone, so the penalty acts on motion relative to
  the camera), and a forward-backward check zeroes the relative motion of pixels whose match from b back to a does
  not return within `consistency` px (the background an object covers or uncovers, which has no true match).
  A small box follows a small object wherever it goes within the search range: 90 % of the same clips in the right
  sector (77 % without registration and the check; ~20 ms per pair, ~10 ms without the check). Not a winner on
  every video: on Meta-World's hand (a large, smoothly shaded body moving ~2 px) it ties Farneback on direction
  (74 % each; plain matching 51 %) but reads a fifth of the hand's speed, so check a new dataset before choosing.

`WithFlow` wraps any LAM batch iterator (the streaming pipeline or the in-memory sampler) and adds

    flow  float32[B, L-1, R, R, 2]   pixels (x right, y down), clip frame i → i+1 (zeros where frame i+1 is invalid)

computed on a thread pool (OpenCV releases the GIL). Iterator state passes through unchanged, so resumption is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class FarnebackParams:
    """cv2.calcOpticalFlowFarneback arguments; the defaults suit 64-256 px robot frames (OpenCV's docs pair
    poly_n=5 with poly_sigma=1.1)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 9
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1
    gate: float = 0.0  # > 0: the photometric noise gate (`noise_gate`) at this many noise sigmas; 0 = raw flow


GATE_DILATE = 1  # px the gate grows by: a moving object's uniform interior changes little between frames, its edge does


def _gray(x: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] RGB → uint8[H, W] luminance (OpenCV's weights)."""
    return cv2.cvtColor(np.ascontiguousarray(x, np.uint8), cv2.COLOR_RGB2GRAY)


def farneback(a: np.ndarray, b: np.ndarray, params: FarnebackParams = FarnebackParams()) -> np.ndarray:
    """Dense flow float32[R, R, 2] from RGB frame a to b (uint8[R, R, 3] each), in pixels; with `params.gate` the
    camera's global shift is removed and the flow is zero wherever the frames agree within their noise."""
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"farneback expects two RGB frames of one shape [H, W, 3], got {a.shape} and {b.shape}")
    ga, gb = _gray(a), _gray(b)
    p = params
    flow = cv2.calcOpticalFlowFarneback(ga, gb, None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n,
                                        p.poly_sigma, 0).astype(np.float32)
    return noise_gate(flow, ga, gb, p.gate) if p.gate > 0 else flow


@dataclasses.dataclass(frozen=True)
class BlockMatchParams:
    """`block_match` settings; the defaults were chosen on 512 training clips of the demo world with camera jitter
    and distractors (offset 3) against its ground-truth flow (docs/lam.md, "Block-matching flow targets")."""

    radius: int = 6  # px searched in each direction (a displacement beyond it is not found)
    window: int = 5  # side of the box the squared RGB difference is averaged over (odd)
    penalty: float = 10.0  # cost added per px² of displacement (cost unit: mean squared 0–255 RGB difference per
    # pixel, summed over channels): a flat region, where every displacement matches, gets zero motion
    gate: float = 8.0  # the noise gate (`noise_gate`) at this many noise sigmas; 0 = the raw matches
    register: bool = True  # match b shifted back by the camera's phase-correlation shift (then add the shift back)
    consistency: float = 1.0  # > 0: px a pixel's forward match may miss the backward one by before its relative
    # motion is set to 0 (the forward-backward check); 0 = off. Defaults chosen on training clips (docs/lam.md)


def block_match(a: np.ndarray, b: np.ndarray, params: BlockMatchParams = BlockMatchParams()) -> np.ndarray:
    """Dense flow float32[R, R, 2] (x, y) from RGB frame a to b (uint8[R, R, 3] each) by block matching (`_match`),
    optionally on registered frames (`params.register`) with a forward-backward check (`params.consistency`), then
    the noise gate (`params.gate`). Without the gate the flow includes the camera's shift; with it, it is relative
    to the camera (as `noise_gate` returns it)."""
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"block_match expects two RGB frames of one shape [H, W, 3], got {a.shape} and {b.shape}")
    if params.window < 1 or params.window % 2 == 0 or params.radius < 1:
        raise ValueError(f"block_match needs an odd window >= 1 and a radius >= 1, got {params}")
    ga, gb = _gray(a), _gray(b)
    shift = camera_shift(ga, gb) if params.register else np.zeros(2, np.float32)
    if np.abs(shift).max() > params.radius:  # phase correlation locked onto no shift the search could hold (a
        shift = np.zeros(2, np.float32)  # textured object dominating a flat scene): match unregistered frames
    b_reg = shift_back(b, shift) if shift.any() else b
    flow = _match(a, b_reg, params)
    if params.consistency > 0:
        flow = np.where(inconsistent(flow, _match(b_reg, a, params), params.consistency)[..., None], 0, flow)
    flow = (flow + shift).astype(np.float32)
    if params.gate <= 0:
        return flow
    # registered: the gate registers by the same shift (found once; after a fallback, none), else it finds its own
    return noise_gate(flow, ga, gb, params.gate, shift if params.register else None)


def camera_shift(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """Gray frames uint8[H, W] → float32[2] (dx, dy): b ≈ a shifted by it, by phase correlation (the global shift
    most of the image agrees on; `model.stabilize` finds it the same way inside the model)."""
    (dx, dy), _ = cv2.phaseCorrelate(ga.astype(np.float32), gb.astype(np.float32))
    return np.array([dx, dy], np.float32)


def shift_back(b: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """b [H, W(, C)] moved by −shift (bilinear, edges replicated): registered onto the frame it was shifted from."""
    m = np.float32([[1, 0, -shift[0]], [0, 1, -shift[1]]])
    return cv2.warpAffine(b, m, (b.shape[1], b.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def inconsistent(forward: np.ndarray, backward: np.ndarray, tol: float) -> np.ndarray:
    """forward a → b and backward b → a flow float32[H, W, 2] → bool[H, W]: where following the forward flow and
    then the backward flow (read bilinearly at the landing point) ends more than `tol` px from the start."""
    h, w = forward.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    back = cv2.remap(backward, gx + forward[..., 0], gy + forward[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
    return np.linalg.norm(forward + back, axis=-1) > tol


def _match(a: np.ndarray, b: np.ndarray, params: BlockMatchParams) -> np.ndarray:
    """Raw matches float32[R, R, 2] (x, y) from RGB frame a to b: for each pixel, the displacement d (|dx|, |dy| <=
    radius) minimising box-mean ‖b(p + d) − a(p)‖² + penalty·|d|², refined by a parabola through the neighbouring
    costs along x and along y (sub-pixel; not at the search range's edge)."""
    r, n = params.radius, 2 * params.radius + 1
    h, w = a.shape[:2]
    fa = a.astype(np.float32)
    fb = cv2.copyMakeBorder(b.astype(np.float32), r, r, r, r, cv2.BORDER_REPLICATE)
    sq = np.zeros((n, n, h, w), np.float32)  # [dy, dx, y, x]: ‖b(y + dy, x + dx) − a(y, x)‖², channel by channel
    for c in range(3):
        diff = np.lib.stride_tricks.sliding_window_view(np.ascontiguousarray(fb[..., c]), (h, w)) - fa[..., c]
        sq += diff * diff
    # one box filter over all n² displacement maps at once (scipy's 'reflect' is OpenCV's BORDER_REFLECT)
    cost = ndimage.uniform_filter(sq, size=(1, 1, params.window, params.window), mode="reflect")
    d = np.arange(-r, r + 1, dtype=np.float32)
    cost += params.penalty * (d[:, None, None, None] ** 2 + d[None, :, None, None] ** 2)
    best = cost.reshape(n * n, h, w).argmin(0)
    iy, ix = best // n, best % n
    yy, xx = np.mgrid[:h, :w]
    at = lambda oy, ox: cost[np.clip(iy + oy, 0, n - 1), np.clip(ix + ox, 0, n - 1), yy, xx]
    c0 = at(0, 0)

    def vertex(c_m: np.ndarray, c_p: np.ndarray, idx: np.ndarray) -> np.ndarray:
        den = c_m - 2 * c0 + c_p
        ok = (den > 1e-6) & (idx > 0) & (idx < n - 1)
        return np.where(ok, np.clip(0.5 * (c_m - c_p) / np.where(ok, den, 1.0), -0.5, 0.5), 0.0)

    flow = np.stack([d[ix] + vertex(at(0, -1), at(0, 1), ix), d[iy] + vertex(at(-1, 0), at(1, 0), iy)], -1)
    return flow.astype(np.float32)


def noise_gate(flow: np.ndarray, ga: np.ndarray, gb: np.ndarray, k: float,
               shift: np.ndarray | None = None) -> np.ndarray:
    """flow float32[H, W, 2] of gray frames ga → gb (uint8[H, W]) → (flow − camera shift) where the registered frames
    differ by more than k noise sigmas (grown by GATE_DILATE px), 0 elsewhere. `shift` float32[2]: the camera shift
    the caller already found (block matching's registration); None = find it here.

    Why: Farneback's error on static pixels (0.6–0.85 px on the demo's JPEG frames) is above the flow loss's 0.5 px
    "moving" threshold, so without a gate the moving weight lands mostly on noise (docs/lam.md, part 5). The camera
    shift is found by phase correlation (as `model.stabilize` does in the model) and b is shifted back onto a; the
    difference |b' − a| has a per-pair noise sigma, 1.4826 × its median absolute deviation about its median (robust:
    few pixels move); a pixel counts as possibly moving when it exceeds median + k·sigma. Its flow, less the camera
    shift, is kept; every other pixel's target is zero motion."""
    shift = camera_shift(ga, gb) if shift is None else shift
    diff = np.abs(shift_back(gb.astype(np.float32), shift) - ga.astype(np.float32))
    med = float(np.median(diff))
    sigma = 1.4826 * float(np.median(np.abs(diff - med))) + 1e-3
    keep = (diff > med + k * sigma).astype(np.uint8)
    keep = cv2.dilate(keep, np.ones((2 * GATE_DILATE + 1,) * 2, np.uint8)).astype(bool)
    return np.where(keep[..., None], flow - shift, np.float32(0)).astype(np.float32)


Estimator = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (frame a, frame b) uint8[R, R, 3] → flow f32[R, R, 2]

# loss.flow_target value → (settings class, estimator); `estimator` builds one from the LAM config's loss block
ESTIMATORS: dict[str, tuple[type, Callable[..., np.ndarray]]] = {
    "farneback": (FarnebackParams, farneback),
    "block_match": (BlockMatchParams, block_match),
}


def estimator(loss: Any) -> Estimator:
    """The flow estimator named by `loss.flow_target` with its settings from the loss block (loss.farneback_* or
    loss.block_match_*; a field missing from an older config keeps the class default)."""
    name = str(loss.flow_target)
    if name not in ESTIMATORS:
        raise ValueError(f"loss.flow_target={name!r} is not an estimator (have {sorted(ESTIMATORS)})")
    cls, fn = ESTIMATORS[name]
    kw = {f.name: type(f.default)(loss[f"{name}_{f.name}"]) for f in dataclasses.fields(cls)
          if f"{name}_{f.name}" in loss}
    params = cls(**kw)
    return lambda a, b: fn(a, b, params)


def clip_flow(clip: np.ndarray, valid: np.ndarray | None = None, estimate: Estimator = farneback,
              pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """clip uint8[B, L, R, R, 3] (+ clip_valid bool[B, L]) → flow float32[B, L-1, R, R, 2] between consecutive
    frames by `estimate`; zero where the later frame is past the episode end (a repeated frame)."""
    clip = np.asarray(clip)
    if clip.ndim != 5 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"clip must be uint8[B, L, R, R, 3], got {clip.dtype}{list(clip.shape)}")
    b, n = clip.shape[0], clip.shape[1] - 1
    out = np.zeros((b, n, *clip.shape[2:4], 2), np.float32)
    pairs = [(i, t) for i in range(b) for t in range(n) if valid is None or bool(valid[i, t + 1])]
    pair_flow = lambda p: estimate(clip[p[0], p[1]], clip[p[0], p[1] + 1])
    flows = pool.map(pair_flow, pairs) if pool is not None else map(pair_flow, pairs)
    for (i, t), f in zip(pairs, flows, strict=True):
        out[i, t] = f
    return out


class WithFlow:
    """Wraps a LAM batch iterator (dicts or data.batch.LAMBatch) and adds estimated 'flow' to each batch (dict),
    between the clip frames after its `context` leading frames (model.decoder.context)."""

    def __init__(self, it: Iterator, estimate: Estimator = farneback, threads: int = 4, context: int = 0):
        self.it, self.estimate, self.context = it, estimate, context  # context: leading decoder frames (no flow)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flow_targets")

    def __iter__(self) -> WithFlow:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.it)
        d = batch.to_dict() if hasattr(batch, "to_dict") else dict(batch)
        if "clip" not in d:
            raise KeyError(f"flow targets need a 'clip' field in the batch (have {sorted(d)})")
        valid = d.get("clip_valid")
        d["flow"] = clip_flow(np.asarray(d["clip"])[:, self.context:],
                              None if valid is None else np.asarray(valid)[:, self.context:], self.estimate, self.pool)
        return d

    def get_state(self) -> Any:
        return self.it.get_state()

    def set_state(self, state: Any) -> None:
        self.it.set_state(state)

    def __getattr__(self, name: str) -> Any:  # statistics, dataset_names, ... of the wrapped iterator
        if name == "it":
            raise AttributeError(name)
        return getattr(self.it, name)
