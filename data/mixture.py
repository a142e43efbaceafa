"""Weighted mixtures -> one tf.data pipeline per host (read → standardize → normalize → window → mix → shuffle
(encoded) → decode/resize/augment → batch).

RAM (per host) ≈ shuffle_buffer × (encoded images per sample × JPEG size + ~0.5 KB low-dim)
               + prefetch(2) × decoded batch + Σ_d read_parallelism_d × TFRecord read buffers.
E.g. 64 px demo JPEGs average 2.5 KB: the ViPRA window (3 images, ~8 KB/sample) with a 10k buffer ≈ 80 MB, LAM
clips of 8 frames (~20 KB/sample) ≈ 200 MB. Measured (scripts/benchmark.py data, B=64): the whole pipeline adds
~250 MiB (ViPRA) / ~460 MiB (LAM) to the ~650 MiB of an idle TF process. The shuffle buffer dominates at OXE scale:
256² JPEGs of ~15 KB, 3 images, 250k buffer ≈ 11 GB per host.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from data import normalization, oxe, rlds, tf_setup
from data.augment import AugmentConfig, augment_frames, decode_frames
from data.rlds import DataError
from data.windows import WindowSpec, make_windows

tf = tf_setup.tf
BLANK_MAX = 10  # brightest pixel <= this: a blank frame (same rule as data/episodes.py)
_plain = tf.autograph.experimental.do_not_convert  # our map fns use tf ops only; skip autograph


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    """One dataset of a mixture; version None -> the registry default; root None -> the pipeline's data_root."""

    name: str
    weight: float = 1.0
    version: str | None = None
    split: str | None = None
    root: str | None = None


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Named weighted mixture. balance_by_size multiplies weights by each dataset's transition count (octo-style)."""

    name: str
    entries: tuple[MixtureEntry, ...]
    balance_by_size: bool = False

    def __post_init__(self) -> None:
        if not self.entries or any(e.weight <= 0 for e in self.entries):
            raise ValueError(f"mixture {self.name!r}: needs at least one entry and positive weights")


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
ENTRY_SYNTAX = ("name[:version][@root][:weight or =weight], e.g. bridge_dataset@/data/rail:1.0 or "
                "fractal20220817_data:0.1.0=0.5")


def _weight(text: str) -> float | None:
    try:
        w = float(text)
    except ValueError:
        return None
    return w if math.isfinite(w) else None


def parse_entry(text: str) -> MixtureEntry:
    """One command-line mixture entry (`ENTRY_SYNTAX`) -> MixtureEntry; DataError with one line on a mistake.

    Without '@', 'name:X' is a version when X looks like 1.2.3 and a weight otherwise.
    """
    return _parse_entry(text)[0]


def _parse_entry(text: str) -> tuple[MixtureEntry, bool]:
    """(entry, whether the text gave a weight)."""
    raw = text.strip()
    bad = lambda why: DataError(f"mixture entry {raw!r}: {why} (expected {ENTRY_SYNTAX})")
    body, weight = raw, None
    if "=" in body:
        body, _, weight = body.rpartition("=")
    head, at, root = body.partition("@")
    name, version = head, ""
    if at:
        if weight is None:
            r, colon, w = root.rpartition(":")
            if colon and _weight(w) is not None:
                root, weight = r, w
        if not root:
            raise bad("empty root after '@'")
    parts = head.split(":")
    if len(parts) > 3:
        raise bad("too many ':'")
    name = parts[0]
    if len(parts) >= 2:
        if _VERSION.match(parts[1]):
            version = parts[1]
            if len(parts) == 3:
                if weight is not None:
                    raise bad("two weights")
                weight = parts[2]
        elif len(parts) == 2 and weight is None and not at:
            weight = parts[1]
        else:
            raise bad(f"version {parts[1]!r} is not of the form X.Y.Z")
    if not name:
        raise bad("empty dataset name")
    w = 1.0 if weight is None else _weight(weight)
    if w is None or w <= 0:
        raise bad(f"weight {weight!r} is not a positive number")
    oxe.get_spec(name)  # unknown name: "did you mean"
    return MixtureEntry(name, w, version or None, None, root or None), weight is not None


def parse_mixture(text: str | Sequence[str], *, name: str = "cli") -> Mixture:
    """Comma-separated entries (or a list of them) -> Mixture; every entry is checked and all mistakes reported at
    once, one line each (DataError)."""
    return Mixture(name, tuple(e for e, _ in _parse_all(text, name)))


def _parse_all(text: str | Sequence[str], name: str) -> list[tuple[MixtureEntry, bool]]:
    items = [p for p in (text.split(",") if isinstance(text, str) else list(text)) if p.strip()]
    entries, errors = [], []
    for item in items:
        try:
            entries.append(_parse_entry(item))
        except DataError as e:
            errors.append(str(e))
    if not items:
        errors.append(f"mixture {name!r}: no entries (expected {ENTRY_SYNTAX})")
    if errors:
        raise DataError("\n".join(errors))
    return entries


def mixture_from_lists(name: str, datasets: Sequence[str], weights: Sequence[float] | None = None) -> Mixture:
    """Config lists (data.datasets entries in `ENTRY_SYNTAX`, data.weights) -> Mixture; a weight in an entry wins."""
    if weights is not None and len(weights) != len(datasets):
        raise DataError(f"mixture {name!r}: {len(datasets)} datasets but {len(weights)} weights (expected one weight "
                        "per dataset)")
    parsed = _parse_all(list(datasets), name)
    if weights is None:
        return Mixture(name, tuple(e for e, _ in parsed))
    return Mixture(name, tuple(e if explicit else dataclasses.replace(e, weight=float(w))
                               for (e, explicit), w in zip(parsed, weights, strict=True)))


def check_mixture(mixture: Mixture, data_root: str) -> None:
    """Opens every member's directory and checks its features before anything is read; all problems at once, one
    line each (DataError)."""
    errors = []
    for e in mixture.entries:
        try:
            spec = oxe.get_spec(e.name)
            root = e.root or data_root
            if not root:
                raise DataError(f"dataset {e.name!r}: no root (give name@root or a data_root)")
            spec.select_layout(rlds.open_dataset(root, e.name, e.version or spec.default_version))
        except DataError as err:
            errors.append(str(err))
    if errors:
        raise DataError("\n".join(errors))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines the batch stream (its hash is stored in the iterator state).

    deterministic=True: seeded everything + in-order parallel ops (exact resume needs it; costs some throughput).
    global_batch_size is split evenly over processes; shuffle_buffer counts frames (still encoded);
    read_parallelism / decode_parallelism bound the threads (reads are shared among datasets by weight, >= 1 each).
    segment_batches: the stream is re-seeded every this many batches, bounding the resume cost (see loader.py).
    """

    data_root: str
    window: WindowSpec = dataclasses.field(default_factory=WindowSpec)
    global_batch_size: int = 32
    resolution: int = 64
    wrist_resolution: int = 64
    split: str = "train"
    # the split whose statistics normalize actions and proprio ('' = `split`): an evaluation pipeline names the
    # training split, so held-out batches are normalized exactly as the model was trained (octo / OpenVLA likewise)
    stats_split: str = ""
    seed: int = 0
    deterministic: bool = True
    shuffle_buffer: int = 10_000
    augment: AugmentConfig | None = None
    normalization: str = "normal"
    stats_dir: str | None = None
    read_parallelism: int = 4
    decode_parallelism: int = 2
    interleave_episodes: int = 4
    segment_batches: int = 2_000
    prefetch: int = 2
    ram_budget_gb: int = 4
    camera: str = ""  # '' = each dataset's registry default_camera; 'primary' | 'secondary' | 'wrist'


@dataclasses.dataclass
class DatasetHandle:
    """An opened, validated mixture member with its stats."""

    entry: MixtureEntry
    spec: oxe.DatasetSpec
    opened: rlds.OpenedDataset
    split: str
    stats: dict[str, Any]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (2**32) for p in parts]).generate_state(1)[0] % (2**31 - 1))


def standardized(handle: DatasetHandle, split: str, *, seed: int | None, shuffle_files: bool,
                 read_parallelism: int = 1) -> Any:
    """Episodes of one dataset as standard trajectories (+ episode_id int64), filtered, zero-length dropped."""
    ds = rlds.read_episodes(handle.opened, split, seed=seed, shuffle_files=shuffle_files,
                            read_parallelism=read_parallelism)
    keep = oxe.keep_fn(handle.spec, handle.opened)
    if keep is not None:
        ds = ds.filter(_plain(keep))
    std = oxe.standardize_fn(handle.spec, handle.opened)

    def fn(ep: dict) -> dict:
        out = std(ep)
        out["episode_id"] = tf.strings.to_hash_bucket_fast(ep["tfds_id"], 2**62)
        return out

    ds = ds.map(_plain(fn), num_parallel_calls=read_parallelism)
    return ds.filter(_plain(lambda tr: tf.shape(tr["action"])[0] > 0))


def open_mixture(mixture: Mixture, cfg: PipelineConfig) -> list[DatasetHandle]:
    """Opens and validates every member (clear errors up front) and loads/computes its normalization stats."""
    check_mixture(mixture, cfg.data_root)
    handles = []
    for entry in mixture.entries:
        spec = oxe.get_spec(entry.name)
        opened = rlds.open_dataset(entry.root or cfg.data_root, entry.name, entry.version or spec.default_version)
        spec.select_layout(opened)  # raises on mismatched features
        split = rlds.resolve_split(opened, entry.split or cfg.split)
        stats_split = split if entry.split or not cfg.stats_split else rlds.resolve_split(opened, cfg.stats_split)
        handle = DatasetHandle(entry, spec, opened, split, {})
        handle.stats = normalization.load_or_compute(
            opened, spec, stats_split,
            lambda h=handle, s=stats_split: standardized(h, s, seed=None, shuffle_files=False), cfg.stats_dir)
        handles.append(handle)
    return handles


def check_host_slices(handles: Sequence[DatasetHandle], process_index: int, process_count: int) -> None:
    """Refuses, in one line, a member whose part of the split on this host has no episode left after the registry's
    filter and the zero-length drop (e.g. kuka's success filter over a per-host slice of failures).

    Without this check tf.data would quietly drop the member from `sample_from_datasets` on this host only (the
    hosts would train on different mixtures) or end the stream. Reads at most up to the first kept episode of each
    member, once, before any batch is built; every host runs it before the first collective, so a bad layout fails
    fast instead of leaving the other hosts waiting.
    """
    for h in handles:
        split, disjoint = rlds.host_split(h.opened, h.split, process_index, process_count)
        first = standardized(h, split, seed=None, shuffle_files=False).take(1)
        if next(iter(first.as_numpy_iterator()), None) is not None:
            continue
        where = (f"process {process_index} of {process_count} reads part {process_index + 1}/{process_count} of "
                 f"split {h.split!r}" if disjoint and process_count > 1 else f"split {h.split!r}")
        why = "the registry's episode filter and the zero-length drop" if h.spec.episode_filter is not None \
            else "the zero-length drop"
        raise DataError(f"dataset {h.spec.name!r} at {h.opened.path}: {where} and no episode is left after {why}; "
                        "expected at least one usable episode per host (use fewer processes, a larger split, "
                        "or leave the dataset out of the mixture)")


def mixture_weights(mixture: Mixture, handles: Sequence[DatasetHandle]) -> np.ndarray:
    """Sampling probabilities per dataset (frame level)."""
    w = np.array([h.entry.weight for h in handles], np.float64)
    if mixture.balance_by_size:
        w = w * np.array([h.stats["num_transitions"] for h in handles], np.float64)
    return w / w.sum()


def allocate(total: int, weights: np.ndarray) -> list[int]:
    """Splits `total` threads by weight, at least 1 each."""
    return [max(1, round(total * float(w))) for w in weights]


def frame_dataset(handle: DatasetHandle, index: int, cfg: PipelineConfig, *, seed: int, process_index: int,
                  process_count: int, read_parallelism: int) -> Any:
    """Infinite stream of encoded per-step windows for one dataset, this host's part of its split."""
    split, _disjoint = rlds.host_split(handle.opened, handle.split, process_index, process_count)
    ds = standardized(handle, split, seed=seed, shuffle_files=True, read_parallelism=read_parallelism)
    ds = ds.repeat()
    stride = cfg.window.frame_stride(handle.spec.name, handle.spec.fps)
    camera = cfg.camera or handle.spec.default_camera
    if camera not in oxe.CAMERAS:
        from core.errors import unknown

        raise DataError(unknown("camera", camera, oxe.CAMERAS))

    def window(tr: dict) -> dict:
        if camera != "primary":  # the windows read image_primary: the chosen camera takes its place
            tr = {**tr, "image_primary": tr[f"image_{camera}"]}
        tr = normalization.normalize_trajectory(tr, handle.stats, cfg.normalization)
        tr["dataset_index"] = tf.constant(index, tf.int32)
        return make_windows(tr, cfg.window, stride)

    ds = ds.map(_plain(window), num_parallel_calls=read_parallelism)
    return ds.interleave(tf.data.Dataset.from_tensor_slices, cycle_length=max(1, cfg.interleave_episodes),
                         block_length=1, num_parallel_calls=read_parallelism, deterministic=cfg.deterministic)


def decode_fn(cfg: PipelineConfig, aug_seed: int) -> Any:
    """(index, encoded sample) -> decoded sample; augmentation seeded by (aug_seed, index), same for all frames."""
    kind = cfg.window.kind
    res = cfg.resolution

    def fn(index: Any, x: dict) -> dict:
        out = dict(x)
        seed = tf.stack([tf.constant(aug_seed, tf.int64), tf.cast(index, tf.int64)])
        if kind == "lam":
            frames = decode_frames(x["clip"], res)
        else:
            frames = decode_frames(x["history"], res)
            if kind == "vla":
                frames = tf.concat([frames, decode_frames(x["future"][None], res)], 0)
                if "clip" in x:  # same augmentation for every frame of the sample
                    frames = tf.concat([frames, decode_frames(x["clip"], res)], 0)
        if cfg.augment is not None:
            frames = augment_frames(frames, seed, cfg.augment)
        if kind == "lam":
            out["clip"] = frames
        elif kind == "vla":
            w = len(cfg.window.history_offsets)
            out["history"], out["future"] = frames[:w], frames[w]
            if "clip" in x:
                out["clip"] = frames[w + 1:]
        else:
            out["history"] = frames
            out["wrist"] = decode_frames(x["wrist"][None], cfg.wrist_resolution)[0]
            # a black frame is no view either (datasets that store absent cameras as blank images)
            out["wrist_valid"] = tf.logical_and(x["wrist_valid"], tf.reduce_max(out["wrist"]) > BLANK_MAX)
        return out

    return fn


def build(mixture: Mixture, cfg: PipelineConfig, handles: Sequence[DatasetHandle], *, segment: int = 0,
          skip_samples: int = 0, process_index: int = 0, process_count: int = 1) -> Any:
    """The batched tf.data pipeline of one segment for this host (dict of numpy-able tensors, local batch)."""
    if cfg.global_batch_size % process_count:
        raise ValueError(f"global_batch_size {cfg.global_batch_size} is not divisible by {process_count} processes")
    local_batch = cfg.global_batch_size // process_count
    weights = mixture_weights(mixture, handles)
    reads = allocate(cfg.read_parallelism, weights)
    streams = [frame_dataset(h, i, cfg, seed=_seed(cfg.seed, segment, process_index, i), process_index=process_index,
                             process_count=process_count, read_parallelism=reads[i]) for i, h in enumerate(handles)]
    if len(streams) == 1:
        ds = streams[0]
    else:
        ds = tf.data.Dataset.sample_from_datasets(streams, weights=weights.tolist(),
                                                  seed=_seed(cfg.seed, segment, process_index, 10_001))
    ds = ds.shuffle(cfg.shuffle_buffer, seed=_seed(cfg.seed, segment, process_index, 10_002),
                    reshuffle_each_iteration=False)
    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
    if skip_samples:
        ds = ds.skip(skip_samples)  # cheap: before decoding
    ds = ds.map(_plain(decode_fn(cfg, _seed(cfg.seed, segment, process_index, 10_003))),
                num_parallel_calls=cfg.decode_parallelism, deterministic=cfg.deterministic)
    ds = ds.batch(local_batch, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = cfg.deterministic
    options.autotune.ram_budget = int(cfg.ram_budget_gb) * 2**30
    options.experimental_optimization.map_parallelization = not cfg.deterministic
    ds = ds.with_options(options)
    return ds.prefetch(cfg.prefetch)
