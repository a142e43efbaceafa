"""The one place that silences third-party console noise (TensorFlow / TFDS / absl / oneDNN / gRPC).

Two halves, because some of the noise is printed by C++ before any Python runs:

* `ENV` — environment variables read by the native libraries at load time. `apply_env()` sets them in this
  process (call it before TensorFlow is imported; `data/tf_setup.py` does) and `child_env()` returns an environment
  for subprocesses (the demo's stages), so every child starts quiet too. A value the user already exported wins:
  `TF_CPP_MIN_LOG_LEVEL=0 make demo` still shows everything (in the stage logs).
* `silence_python()` — Python-side noise after import: TFDS's own progress bars ("Generating train examples…",
  "Shuffling…"), TensorFlow's deprecation notices ("Instructions for updating: Use `tf.data.Dataset.counter(...)`"),
  and `DeprecationWarning`/`FutureWarning` raised inside third-party packages.

Our own logging (absl INFO lines of the trainers, their progress lines) is left alone: it is what a user reads.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping

# TF_CPP_MIN_LOG_LEVEL=3: C++ INFO/WARNING/ERROR of TF and XLA (oneDNN notices, "All log messages before
# absl::InitializeLog() ...", CPU-feature lines) are not printed; fatal errors still are. GLOG/GRPC: same for the
# gRPC and glog-based parts. TF_ENABLE_ONEDNN_OPTS=0: on CPUs where TensorFlow turns its oneDNN custom ops on by
# default (AVX-512 VNNI / AMX), TF 2.21 logs "oneDNN custom operations are on ..." through absl before its log level
# applies, so TF_CPP_MIN_LOG_LEVEL does not hide it (nor absl's "All log messages before ..." line that it triggers).
# TensorFlow only runs input pipelines here (decode, resize, shuffle), none of which uses those ops.
ENV: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
}
_PACKAGES = ("tensorflow", "tensorflow_datasets", "absl", "keras", "tf_keras", "google.protobuf", "jax", "flax",
             "orbax", "optax", "chex", "ml_collections", "array_record", "etils")


def apply_env(env: Mapping[str, str] = ENV) -> None:
    """Sets each of `env` in os.environ unless it is already set (call before importing TensorFlow)."""
    for k, v in env.items():
        os.environ.setdefault(k, v)


MALLOC_TUNABLES = "glibc.malloc.hugetlb=1"
MALLOC_ENV = "LATENT_VLA_MALLOC"  # "default": no MALLOC_TUNABLES, for stages (child_env) and trainers (core.cli)


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) with the quiet defaults added (values already there win)."""
    out = dict(os.environ if base is None else base)
    for k, v in ENV.items():
        out.setdefault(k, v)
    out.setdefault("PYTHONUNBUFFERED", "1")  # a stage's lines reach its log (and the progress bar) as they happen
    # glibc's malloc asks for transparent huge pages (read at process start, so only a child can get it): on the
    # D512 AdamW step it cut minor page faults 3.2M -> 0.18M per process and CPU per step ~9 % (docs/training.md);
    # an unknown tunable is ignored by older glibc and by other C libraries. MALLOC_ENV=default keeps glibc's
    # default malloc here too (the same switch as for a trainer started by hand, core.cli.tune_malloc)
    if out.get(MALLOC_ENV, "").strip().lower() != "default":
        out.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    return out


class ThirdPartyFilter(logging.Filter):
    """Drops log records below ERROR that were emitted from inside TensorFlow / TFDS code."""

    MARKERS = (f"{os.sep}tensorflow_datasets{os.sep}", f"{os.sep}tensorflow{os.sep}")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(m in record.pathname for m in self.MARKERS)


def silence_python() -> None:
    """Python-side noise off: third-party warnings, TF's deprecation logger, TFDS progress bars (if loaded)."""
    for pkg in _PACKAGES:
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=pkg.replace(".", r"\.") + r"(\.|$)")
    # TF's deprecation notices go through the "tensorflow" Python logger at WARNING level
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # TFDS logs through absl's logger, which is also ours: drop only its records below ERROR ("Variant folder ...
    # has no dataset_info.json" while a dataset is being written)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, ThirdPartyFilter) for f in absl_logger.filters):
        absl_logger.addFilter(ThirdPartyFilter())
    tfds = sys.modules.get("tensorflow_datasets")
    if tfds is not None:
        tfds.disable_progress_bar()
