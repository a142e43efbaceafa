"""Open RLDS/TFDS datasets by explicit directory + version; read episodes with images still encoded.

Never resolves a bare registered name (that makes TFDS reach the network for OXE names): a dataset is always
`<root>/<name>/<version>` opened with `tfds.builder_from_directory`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import numpy as np

from core.errors import UserError
from data import tf_setup

tf = tf_setup.tf
tfds = tf_setup.tfds


class DataError(UserError, ValueError):
    """Bad data input (missing directory, wrong version, mismatched features, unknown name, unreadable shard)."""


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One RLDS feature leaf. kind: 'image' | 'tensor' | 'text'; encoding: jpeg/png (images), none/zlib/bytes."""

    kind: str
    dtype: str
    shape: tuple[int | None, ...]
    encoding: str = "none"

    def describe(self) -> str:
        enc = "" if self.encoding == "none" else f", {self.encoding}"
        return f"{self.kind} {self.dtype}{list(self.shape)}{enc}"


@dataclasses.dataclass
class OpenedDataset:
    """A TFDS builder opened from `<root>/<name>/<version>` plus its flattened feature leaves ('steps/...' keys)."""

    name: str
    version: str
    path: str
    builder: Any
    features: dict[str, FeatureInfo]

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of episodes."""
        return {k: int(v.num_examples) for k, v in self.builder.info.splits.items()}

    def features_hash(self) -> str:
        """sha256 (16 hex chars) of the flattened feature spec; keys normalization caches."""
        blob = json.dumps({k: dataclasses.asdict(v) for k, v in sorted(self.features.items())}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten_features(features: Any, prefix: str = "") -> dict[str, FeatureInfo]:
    """Flattens a TFDS FeaturesDict (with a nested `steps` Dataset) into {'a/b/c': FeatureInfo}."""
    out: dict[str, FeatureInfo] = {}
    f = tfds.features
    if isinstance(features, f.Dataset):
        return flatten_features(features.feature, prefix)
    if isinstance(features, f.FeaturesDict):
        for key in features.keys():  # noqa: SIM118 (FeaturesDict is not a plain mapping)
            out.update(flatten_features(features[key], f"{prefix}{key}/"))
        return out
    path = prefix.rstrip("/")
    if isinstance(features, f.Image):
        out[path] = FeatureInfo("image", np.dtype(features.np_dtype).name, tuple(features.shape),
                                str(features.encoding_format or "png"))
    elif isinstance(features, f.Text):
        out[path] = FeatureInfo("text", "string", ())
    elif isinstance(features, f.Tensor):
        enc = getattr(features, "_encoding", None)
        enc_name = str(getattr(enc, "value", enc) or "none").lower()
        out[path] = FeatureInfo("tensor", np.dtype(features.np_dtype).name, tuple(features.shape), enc_name)
    else:
        out[path] = FeatureInfo(type(features).__name__.lower(), "unknown", ())
    return out


def open_dataset(root: str, name: str, version: str) -> OpenedDataset:
    """Opens `<root>/<name>/<version>` (explicit version, no network). Raises DataError with what exists otherwise."""
    if not version:
        raise DataError(f"dataset {name!r}: an explicit version is required (a bare name makes TFDS use the network)")
    ds_dir = os.path.join(root, name)
    path = os.path.join(ds_dir, version)
    if not tf.io.gfile.isdir(ds_dir):
        raise DataError(f"dataset {name!r}: directory {ds_dir} does not exist (expected <root>/<name>/<version>)")
    if not tf.io.gfile.isdir(path):
        found = sorted(v for v in tf.io.gfile.listdir(ds_dir) if tf.io.gfile.isdir(os.path.join(ds_dir, v)))
        found = [v.rstrip("/") for v in found]
        raise DataError(f"dataset {name!r}: version {version!r} not found in {ds_dir}; available versions: {found}")
    for required in ("dataset_info.json", "features.json"):
        if not tf.io.gfile.exists(os.path.join(path, required)):
            raise DataError(f"dataset {name!r}: {path} has no {required}; not a TFDS dataset directory")
    try:
        builder = tfds.builder_from_directory(path)
    except Exception as e:  # TFDS raises many types here; one clear line instead
        raise DataError(f"dataset {name!r}: cannot open {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    _check_shards(name, path, builder)
    return OpenedDataset(name, version, path, builder, flatten_features(builder.info.features))


def _check_shards(name: str, path: str, builder: Any) -> None:
    """Fails fast if a shard listed in dataset_info.json is missing or empty (corruption is detected at read time)."""
    for split_name, split in builder.info.splits.items():
        for fname in split.filenames:
            fpath = os.path.join(path, fname)
            if not tf.io.gfile.exists(fpath):
                raise DataError(f"dataset {name!r}: split {split_name!r} shard {fpath} is missing")
            if tf.io.gfile.stat(fpath).length == 0 and split.num_examples > 0:
                raise DataError(f"dataset {name!r}: split {split_name!r} shard {fpath} is empty")


# A dataset with only a train split holds its last 5 % of episodes out as 'val' and trains on the rest (octo's rule):
# 'val' -> VAL_PART and a plain 'train' -> TRAIN_PART, so held-out figures never read training episodes.
TRAIN_PART, VAL_PART = "train[:95%]", "train[95%:]"


def resolve_split(opened: OpenedDataset, split: str) -> str:
    """Maps 'train'/'val' onto what the dataset has ('val' -> 'test', 'validation', or the last 5 % of train, which a
    plain 'train' then leaves out: TRAIN_PART / VAL_PART). A sliced train split ('train[:50]') is read as given."""
    available = opened.splits
    base = split.split("[")[0]
    if split == "train" and "train" in available and not {"val", "test", "validation"} & set(available):
        return TRAIN_PART
    if base in available:
        return split
    if base == "val" and "test" in available:
        return split.replace("val", "test", 1)
    if base == "val" and "validation" in available:
        return split.replace("val", "validation", 1)
    if base == "val" and "train" in available:
        return VAL_PART
    raise DataError(f"dataset {opened.name!r}: split {split!r} not found; available splits: {sorted(available)}")


def host_split(opened: OpenedDataset, split: str, process_index: int, process_count: int) -> tuple[str, bool]:
    """Returns (split string for this host, whether it is disjoint per host).

    Datasets with at least `process_count` episodes are split into disjoint, covering, example-level parts
    (`tfds.split_for_jax_process`); smaller ones are read whole by every host (decorrelated by per-host seeds).
    """
    split = resolve_split(opened, split)
    if process_count <= 1:
        return split, True
    n = opened.splits.get(split.split("[")[0], 0)
    if n >= process_count and ("[" not in split or split == TRAIN_PART):
        return tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count), True
    return split, False


def read_episodes(opened: OpenedDataset, split: str, *, seed: int | None, shuffle_files: bool = True,
                  read_parallelism: int = 1) -> Any:
    """tf.data.Dataset of episodes: `steps` as dense [T, ...] tensors, images/zlib tensors still encoded bytes."""
    read_config = tfds.ReadConfig(
        shuffle_seed=seed,
        interleave_cycle_length=max(1, read_parallelism),
        num_parallel_calls_for_interleave_files=max(1, read_parallelism),
        skip_prefetch=True,
        try_autocache=False,
        add_tfds_id=True,
        enable_ordering_guard=False,  # ordered (disable_shuffling) datasets may still be read with shuffled files
    )
    return opened.builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        decoders={"steps": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )


def tf_error_line(e: Exception) -> str:
    """First line of a TF error without the '{{function_node ...}}' prefix and op suffix."""
    msg = str(getattr(e, "message", "") or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", msg)


def find_corrupt_shard(opened: OpenedDataset, max_bytes: int = 2 * 2**30) -> str | None:
    """Reads every shard's records (up to `max_bytes` in total) and returns the first unreadable file, if any."""
    budget = max_bytes
    for split in opened.builder.info.splits.values():
        for fname in split.filenames:
            path = os.path.join(opened.path, fname)
            budget -= tf.io.gfile.stat(path).length
            if budget < 0:
                return None
            try:
                for _ in tf.data.TFRecordDataset(path):
                    pass
            except tf.errors.OpError:
                return path
    return None
