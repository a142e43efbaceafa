"""One episode reader for every offline tool (VQGAN training, LAM train/eval/label, token and latent-label caches).

Episodes are read through `data/rlds.py` (explicit `<root>/<name>/<version>`) and the registry's standardization
(`data/oxe.py`), so the tools see exactly what the streaming pipeline sees: the same conventions (gripper relabel,
dropped first step, absent cameras), the same episode filter, the same episode ids. Nothing here reads a raw feature
key such as `steps/observation/image`, except optional `extras` (e.g. the demo world's `steps/ground_truth/...`).

    src = EpisodeSource(root="/data/oxe", name="bridge_dataset")         # version/camera: the registry's defaults
    for ep in iter_episodes(src, resolution=64):
        ep.frames        # uint8[T, R, R, 3] of the chosen camera (zeros where invalid)
        ep.frame_valid   # bool[T]: the camera exists in this episode (has_image_* flag) and the frame is not blank

Sources on the command line: `name[:version][@root]` (`parse_source`). `fingerprint(...)` hashes everything that
determines what a tool reads (root, name, version, split, feature spec, conventions, camera, resolution, window,
extras); caches are keyed by it and trainers store it with checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from core.jsonable import jsonable
from data import oxe, rlds, tf_setup
from data.rlds import DataError

tf = tf_setup.tf
BLANK_MAX = 10  # a decoded frame whose brightest pixel is <= this is a blank (black) frame: not a valid view
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclasses.dataclass(frozen=True)
class EpisodeSource:
    """One dataset split to read; empty version/camera mean the registry entry's default_version/default_camera."""

    root: str
    name: str
    version: str = ""
    split: str = "train"
    camera: str = ""

    def resolved(self) -> EpisodeSource:
        """The same source with the registry defaults filled in (and the root made absolute)."""
        spec = oxe.get_spec(self.name)
        camera = self.camera or spec.default_camera
        if camera not in oxe.CAMERAS:
            from core.errors import unknown

            raise DataError(unknown("camera", camera, oxe.CAMERAS))
        root = self.root if "://" in self.root else os.path.abspath(self.root)
        return dataclasses.replace(self, root=root, version=self.version or spec.default_version, camera=camera)


def parse_source(text: str, root: str, *, split: str = "train", camera: str = "") -> EpisodeSource:
    """'name[:version][@root]' -> EpisodeSource (root defaults to `root`); one-line DataError on a malformed entry."""
    text = text.strip()
    head, at, where = text.partition("@")
    name, _, version = head.partition(":")
    if not name or (at and not where):
        raise DataError(f"dataset entry {text!r}: expected name[:version][@root], e.g. bridge_dataset:1.0.0@/data/oxe")
    if version and not _VERSION.match(version):
        raise DataError(f"dataset entry {text!r}: version {version!r} is not of the form X.Y.Z")
    oxe.get_spec(name)  # unknown names: "did you mean"
    return EpisodeSource(where or root, name, version, split, camera)


def parse_sources(root: str, names: Sequence[str], split: str, camera: str = "") -> list[EpisodeSource]:
    """Entries 'name[:version][@root]' -> EpisodeSources; every entry checked first, all mistakes in one DataError
    (one line each)."""
    out, errors = [], []
    for n in names:
        try:
            out.append(parse_source(n, root, split=split, camera=camera))
        except DataError as e:
            errors.append(str(e))
    if errors:
        raise DataError("\n".join(errors))
    return out


@dataclasses.dataclass
class Episode:
    """One standardized episode with decoded frames of one camera (T steps after the dataset's conventions).

    episode_id is the streaming pipeline's id (to_hash_bucket_fast(tfds_id, 2**62), data/mixture.py), so caches
    written from these episodes join with pipeline batches; source_id is the dataset's own
    episode_metadata/episode_id (any dtype, as text; "" if the dataset has none).
    """

    dataset: str
    index: int
    episode_id: int
    tfds_id: str
    source_id: str
    frames: np.ndarray  # uint8[T, R, R, 3]
    frame_valid: np.ndarray  # bool[T]
    action: np.ndarray  # float32[T, 7]
    action_valid: np.ndarray  # bool[T]
    proprio: np.ndarray  # float32[T, 8]
    language: str
    extras: dict[str, np.ndarray]  # requested raw leaves, [T, ...]

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _source_id_key(features: dict[str, rlds.FeatureInfo]) -> str | None:
    for key in ("episode_metadata/episode_id", "episode_metadata/file_path", "episode_metadata/video_id"):
        if key in features:
            return key
    return None


def open_source(source: EpisodeSource) -> tuple[EpisodeSource, oxe.DatasetSpec, rlds.OpenedDataset, str]:
    """(resolved source, spec, opened dataset, resolved split); clear DataErrors for every bad input."""
    src = source.resolved()
    spec = oxe.get_spec(src.name)
    opened = rlds.open_dataset(src.root, src.name, src.version)
    spec.select_layout(opened)
    return src, spec, opened, rlds.resolve_split(opened, src.split)


def iter_episodes(source: EpisodeSource, resolution: int, *, extras: Sequence[str] = (),
                  max_episodes: int | None = None, decode: bool = True) -> Iterator[Episode]:
    """Episodes of `source` in file order (deterministic), filtered and standardized as the pipeline does.

    extras: raw step leaves (e.g. 'steps/ground_truth/effector_pos') returned per step; a missing one is a DataError
    naming the leaf. resolution <= 0: the camera's native size (square frames only). decode=False skips decoding
    (frames empty [T, 0, 0, 3], frame_valid from the flags only).
    """
    src, spec, opened, split = open_source(source)
    missing = [k for k in extras if k not in opened.features]
    if missing:
        raise DataError(f"dataset {src.name!r} at {opened.path} has no {missing[0]} (needed here; the demo world's "
                        "ground truth exists only in demo datasets)")
    ds = rlds.read_episodes(opened, split, seed=None, shuffle_files=False)
    keep = oxe.keep_fn(spec, opened)
    if keep is not None:
        ds = ds.filter(keep)
    std = oxe.standardize_fn(spec, opened)
    id_key = _source_id_key(opened.features)
    image_key = f"image_{src.camera}"

    def fn(ep: dict) -> dict:
        out = std(ep)
        r = oxe.Reader(ep, opened.features)
        res = {k: out[k] for k in ("action", "action_valid", "proprio", "language")}
        res["image"] = out[image_key]
        res["tfds_id"] = ep["tfds_id"]
        res["episode_id"] = tf.strings.to_hash_bucket_fast(ep["tfds_id"], 2**62)
        res["source_id"] = tf.strings.as_string(r.raw(id_key)) if id_key and opened.features[id_key].kind != "text" \
            else (r.raw(id_key) if id_key else tf.constant(""))
        for i, k in enumerate(extras):
            x = r.get(k)
            res[f"extra{i}"] = x[1:] if spec.drop_first_step else x
        return res

    ds = ds.map(tf.autograph.experimental.do_not_convert(fn))
    from data.augment import decode_frames

    for i, ep in enumerate(ds):
        if max_episodes is not None and i >= max_episodes:
            break
        n = int(ep["action"].shape[0])
        present = ep["image"].numpy()
        present = np.array([len(b) > 0 for b in present], bool)
        if decode and n and resolution <= 0 and present.any():
            resolution = _native_size(ep["image"].numpy()[int(np.argmax(present))], src)
        if decode and n and resolution > 0:
            frames = decode_frames(ep["image"], resolution).numpy()
            valid = present & (frames.reshape(n, -1).max(axis=1) > BLANK_MAX)
        else:
            frames, valid = np.zeros((n, 0, 0, 3), np.uint8), present
        yield Episode(
            dataset=src.name, index=i, episode_id=int(ep["episode_id"].numpy()),
            tfds_id=ep["tfds_id"].numpy().decode(), source_id=ep["source_id"].numpy().decode(),
            frames=frames, frame_valid=valid, action=ep["action"].numpy(), action_valid=ep["action_valid"].numpy(),
            proprio=ep["proprio"].numpy(), language=ep["language"].numpy().decode(),
            extras={k: ep[f"extra{j}"].numpy() for j, k in enumerate(extras)})


def _native_size(encoded: bytes, src: EpisodeSource) -> int:
    """Side of a square frame (resolution 0 = native); a non-square camera needs an explicit resolution."""
    h, w = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape[:2]
    if h != w:
        raise DataError(f"dataset {src.name!r} camera {src.camera!r} has {h}x{w} frames: set a square resolution "
                        "(e.g. the model's image_size) to resize them")
    return int(h)


def fingerprint(sources: Sequence[EpisodeSource], **extra: Any) -> str:
    """sha256 (16 hex) of what the sources hold and how they are read: resolved root/name/version/split/camera,
    each dataset's feature spec and registry conventions, plus `extra` (e.g. resolution, window, extras, caps).

    Opens each dataset (cheap: metadata only) so a changed feature spec or version directory changes the result.
    """
    parts = []
    for s in sources:
        src, spec, opened, split = open_source(s)
        parts.append({**dataclasses.asdict(src), "split": split, "features": opened.features_hash(),
                      "conventions": spec.conventions()})
    blob = json.dumps(jsonable({"sources": parts, "extra": extra}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def require_valid_frames(episodes: Sequence[Episode] | int, source: EpisodeSource) -> None:
    """One clear line when a camera choice leaves nothing to read (e.g. camera='wrist' on Bridge without wrist)."""
    count = episodes if isinstance(episodes, int) else sum(int(e.frame_valid.sum()) for e in episodes)
    if count == 0:
        raise DataError(f"dataset {source.name!r} split {source.split!r}: camera {source.camera or 'default'!r} has "
                        f"no valid frame (absent per has_image_* flags or blank); choose another camera with "
                        f"camera=... (one of {oxe.CAMERAS})")
