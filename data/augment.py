"""Decode/resize and stateless, seeded image augmentation (after the shuffle).

All frames of one sample (history + future, or a LAM clip) get the same crop and colour jitter, so motion between
frames is preserved. Every random draw is `tf.random.stateless_*` from a per-sample seed: same seed → same pixels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from data import tf_setup

tf = tf_setup.tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random resized crop (area fraction, aspect ratio) + colour jitter magnitudes (0 disables each)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02


def decode_frames(encoded: Any, res: int) -> Any:
    """string[N] (JPEG/PNG; "" = missing) -> uint8[N, res, res, 3], squashed to a square; missing frames are zeros."""

    def one(s: Any) -> Any:
        def dec() -> Any:
            img = tf.io.decode_image(s, channels=3, expand_animations=False)
            img.set_shape([None, None, 3])
            same = tf.logical_and(tf.shape(img)[0] == res, tf.shape(img)[1] == res)
            return tf.cond(same, lambda: img, lambda: tf.cast(tf.clip_by_value(tf.round(
                tf.image.resize(img, [res, res], method="bilinear", antialias=True)), 0, 255), tf.uint8))

        return tf.cond(tf.strings.length(s) > 0, dec, lambda: tf.zeros([res, res, 3], tf.uint8))

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([res, res, 3], tf.uint8))


def _uniform(seed: Any, i: int, lo: float, hi: float) -> Any:
    s = tf.random.experimental.stateless_fold_in(seed, i)
    return tf.random.stateless_uniform([], s, lo, hi)


def augment_frames(frames: Any, seed: Any, cfg: AugmentConfig) -> Any:
    """uint8[N, R, R, 3] -> uint8[N, R, R, 3] with one crop + jitter shared by the N frames; seed int64[2]."""
    n, h, w = tf.shape(frames)[0], frames.shape[1], frames.shape[2]
    x = tf.cast(frames, tf.float32) / 255.0
    area = _uniform(seed, 0, *cfg.crop_scale)
    log_ratio = _uniform(seed, 1, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    ratio = tf.exp(log_ratio)
    ch = tf.minimum(1.0, tf.sqrt(area / ratio))
    cw = tf.minimum(1.0, tf.sqrt(area * ratio))
    y0 = _uniform(seed, 2, 0.0, 1.0) * (1.0 - ch)
    x0 = _uniform(seed, 3, 0.0, 1.0) * (1.0 - cw)
    box = tf.stack([y0, x0, y0 + ch, x0 + cw])
    x = tf.image.crop_and_resize(x, tf.tile(box[None], [n, 1]), tf.range(n), [h, w])
    if cfg.brightness:
        x = x + _uniform(seed, 4, -cfg.brightness, cfg.brightness)
    if cfg.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = (x - mean) * _uniform(seed, 5, 1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.saturation:
        x = tf.image.adjust_saturation(tf.clip_by_value(x, 0, 1), _uniform(seed, 6, 1 - cfg.saturation,
                                                                            1 + cfg.saturation))
    if cfg.hue:
        x = tf.image.adjust_hue(tf.clip_by_value(x, 0, 1), _uniform(seed, 7, -cfg.hue, cfg.hue))
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
