"""Single place where TensorFlow / TFDS are imported: hides accelerators from TF so it never touches GPU/TPU memory."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tensorflow_datasets as tfds

try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
except (RuntimeError, ValueError):  # already initialised or no such device type
    pass

__all__ = ["tf", "tfds"]
