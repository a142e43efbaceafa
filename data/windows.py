"""Windows over a standardized trajectory, all clamped at episode ends with validity masks.

For every step t of a T-step episode (frame stride s = `WindowSpec.frame_stride(dataset, fps)`):
  history   frames t + o*s for o in `history_offsets` (e.g. (-2, 0)); invalid where outside [0, T-1]
  future    frame  t + H*s (the ViPRA "latent state"); invalid past T-1
  actions   action chunk t..t+H-1 at the native rate; pad mask False past T-1 or on invalid actions; padded
            entries are zero motion with the gripper of the last valid action (open if none)
  clip      LAM clip frames t, t+c, ..., t+(L-1)c with c = clip_stride*s; invalid past T-1 (kind 'lam', and kind
            'vla' with `vla_clip`: the frames a frozen LAM labels inside the VideoLLaMA train step)
Indices are clamped, so encoded bytes are always real frames; masks say which are padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data import tf_setup

tf = tf_setup.tf
KINDS = ("vla", "lam", "policy")


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """What each sample holds. kind: 'vla' (VideoLLaMA), 'lam' (LAM clips) or 'policy'.

    reference_fps: if set, frame strides scale with dataset fps (s = max(1, round(fps / reference_fps))), so
    H-step futures and clips cover similar wall-clock time across datasets; `strides` overrides per dataset name.
    """

    kind: str = "vla"
    history_offsets: tuple[int, ...] = (-2, 0)
    horizon: int = 14
    clip_len: int = 8
    clip_stride: int = 1
    reference_fps: float | None = None
    strides: tuple[tuple[str, int], ...] = ()
    drop_last_step: bool = False
    vla_clip: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"WindowSpec.kind {self.kind!r} unknown; expected one of {KINDS}")
        if self.horizon < 1 or self.clip_len < 2 or self.clip_stride < 1 or not self.history_offsets:
            raise ValueError(f"WindowSpec invalid: horizon={self.horizon} (>=1), clip_len={self.clip_len} (>=2), "
                             f"clip_stride={self.clip_stride} (>=1), history_offsets={self.history_offsets} "
                             "(non-empty)")

    def frame_stride(self, dataset: str, fps: float) -> int:
        overrides = dict(self.strides)
        if dataset in overrides:
            return int(overrides[dataset])
        if self.reference_fps:
            return max(1, round(fps / self.reference_fps))
        return 1

    def images_per_sample(self) -> int:
        """Decoded frames per sample (for throughput figures)."""
        if self.kind == "lam":
            return self.clip_len
        clip = self.clip_len if self.kind == "vla" and self.vla_clip else 0
        return len(self.history_offsets) + 1 + clip  # + future frame (vla) or wrist frame (policy)


def _window(defaults: dict[str, Any], kw: dict[str, Any]) -> WindowSpec:
    """WindowSpec from preset `defaults` overridden by any WindowSpec field given as keyword (unknown ones refused)."""
    fields = {f.name for f in dataclasses.fields(WindowSpec)}
    bad = sorted(set(kw) - fields)
    if bad:
        from core.errors import unknown

        raise TypeError(unknown("WindowSpec field", bad[0], fields))
    return WindowSpec(**{**defaults, **kw})


def vipra_window(**kw: Any) -> WindowSpec:
    """ViPRA dynamics14: frames (t-2, t), future t+14, 14-step action chunk (every field overridable by keyword)."""
    return _window({"kind": "vla", "history_offsets": (-2, 0), "horizon": 14}, kw)


def lapa_window(**kw: Any) -> WindowSpec:
    """LAPA latent pretraining: one frame t and a 1-step action (every field overridable by keyword)."""
    return _window({"kind": "vla", "history_offsets": (0,), "horizon": 1}, kw)


def lam_window(clip_len: int = 8, clip_stride: int = 1, **kw: Any) -> WindowSpec:
    """LAM training clips of `clip_len` frames (every field overridable by keyword)."""
    return _window({"kind": "lam", "clip_len": clip_len, "clip_stride": clip_stride}, kw)


def _gather_clamped(x: Any, idx: Any, n: Any) -> tuple[Any, Any]:
    valid = tf.logical_and(idx >= 0, idx < n)
    return tf.gather(x, tf.clip_by_value(idx, 0, n - 1)), valid


def _last_valid_gripper(action: Any, valid: Any) -> Any:
    """float32[T]: gripper of the latest valid action at or before each step (1 = open if none)."""
    pairs = tf.stack([tf.cast(valid, tf.float32), action[:, -1]], -1)
    return tf.scan(lambda prev, p: tf.where(p[0] > 0, p[1], prev), pairs, initializer=tf.constant(1.0))


def make_windows(traj: dict, spec: WindowSpec, stride: int) -> dict:
    """Standardized trajectory (+ dataset_index, episode_id) -> dict of per-step windows with leading axis T."""
    n = tf.shape(traj["action"])[0]
    t = tf.range(n)
    out = {
        "language": tf.fill([n], traj["language"]),
        "dataset_index": tf.fill([n], tf.cast(traj["dataset_index"], tf.int32)),
        "episode_id": tf.fill([n], traj["episode_id"]),
        "step": t,
        "action_valid": traj["action_valid"],
    }
    if spec.kind in ("vla", "policy"):
        offs = tf.constant(spec.history_offsets, tf.int32) * stride
        out["history"], out["history_valid"] = _gather_clamped(traj["image_primary"], t[:, None] + offs[None], n)
        out["proprio"] = traj["proprio"]
        h = spec.horizon
        idx = t[:, None] + tf.range(h)[None]
        chunk, in_range = _gather_clamped(traj["action"], idx, n)
        act_ok, _ = _gather_clamped(traj["action_valid"], idx, n)
        mask = tf.logical_and(in_range, act_ok)
        grip, _ = _gather_clamped(_last_valid_gripper(traj["action"], traj["action_valid"]), idx, n)
        neutral = tf.concat([tf.zeros_like(chunk[..., :-1]), grip[..., None]], -1)
        out["actions"] = tf.where(mask[..., None], chunk, neutral)
        out["action_pad_mask"] = mask
    if spec.kind == "vla":
        out["future"], out["future_valid"] = _gather_clamped(traj["image_primary"], t + spec.horizon * stride, n)
    if spec.kind == "policy":
        out["wrist"] = traj["image_wrist"]
        out["wrist_valid"] = tf.strings.length(traj["image_wrist"]) > 0
    if spec.kind == "lam" or (spec.kind == "vla" and spec.vla_clip):
        idx = t[:, None] + tf.range(spec.clip_len)[None] * (spec.clip_stride * stride)
        out["clip"], out["clip_valid"] = _gather_clamped(traj["image_primary"], idx, n)
    if spec.kind == "lam":
        acts, in_range = _gather_clamped(traj["action"], idx[:, :-1], n)
        ok, _ = _gather_clamped(traj["action_valid"], idx[:, :-1], n)
        # a transition is real when both its frames are and the action at its start is
        out["actions"] = acts
        out["action_pad_mask"] = tf.logical_and(tf.logical_and(in_range, ok), out["clip_valid"][:, 1:])
    if spec.drop_last_step:
        out = {k: v[:-1] for k, v in out.items()}
    return out
