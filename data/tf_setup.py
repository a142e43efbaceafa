"""Single place where TensorFlow / TFDS are imported: hides accelerators from TF so it never touches GPU/TPU memory,
and keeps their console noise off (core/quiet.py: C++ log level, TFDS progress bars, deprecation notices)."""

from __future__ import annotations

from core import quiet

quiet.apply_env()  # before the import: the C++ log level is read when TensorFlow loads

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

quiet.silence_python()

try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
except (RuntimeError, ValueError):  # already initialised or no such device type
    pass

__all__ = ["tf", "tfds"]
