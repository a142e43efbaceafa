"""The data contract: typed batches for the three consumers (shapes documented per field).

B = batch (per host before globalization, global after), W = history frames, H = action horizon, L = clip length,
R = image resolution (square), A = 7 (EEF delta action, gripper 1 = open), P = 8 (padded proprio).
Images are uint8 RGB in [0, 255]. `language` stays a host-local numpy array of UTF-8 bytes (text is tokenized on the
host); every other field is a numpy array or, when the loader is given a sharding, a global jax.Array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

Array = Any  # np.ndarray or jax.Array


@dataclasses.dataclass(frozen=True)
class _Batch:
    """Shared fields: language bytes[B], dataset_index int32[B], episode_id int64[B], step int32[B]."""

    language: np.ndarray
    dataset_index: Array
    episode_id: Array
    step: Array

    RANK: ClassVar[dict[str, int]] = {}
    OPTIONAL: ClassVar[tuple[str, ...]] = ()  # fields that may be absent (None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d and n not in cls.OPTIONAL]
        if missing:
            raise ValueError(f"{cls.__name__}: batch dict lacks {missing} (has {sorted(d)})")
        return cls(**{n: d[n] for n in names if n in d})

    def __post_init__(self) -> None:
        b = np.shape(self.language)[0]
        for name, rank in self.RANK.items():
            if name in self.OPTIONAL and getattr(self, name) is None:
                continue
            shape = np.shape(getattr(self, name))
            if len(shape) != rank or shape[0] != b:
                raise ValueError(f"{type(self).__name__}.{name}: expected rank {rank} with batch {b}, got {shape}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}

    @property
    def batch_size(self) -> int:
        return int(np.shape(self.language)[0])


@dataclasses.dataclass(frozen=True)
class LAMBatch(_Batch):
    """LAM clips.

    clip          uint8[B, L, R, R, 3]  frames t, t+c, ..., t+(L-1)c (clamped at the episode end)
    clip_valid    bool[B, L]            False for frames past the episode end (repeats of the last frame)
    actions       float32[B, L-1, A]    action at each clip frame but the last (for latent-vs-action probes)
    action_pad_mask bool[B, L-1]        False where no real action (action-free video, past the end)
    action_valid  bool[B]               the action at t is real
    """

    clip: Array = None
    clip_valid: Array = None
    actions: Array = None
    action_pad_mask: Array = None
    action_valid: Array = None
    RANK: ClassVar[dict[str, int]] = {"clip": 5, "clip_valid": 2, "actions": 3, "action_pad_mask": 2,
                                      "action_valid": 1}


@dataclasses.dataclass(frozen=True)
class VLABatch(_Batch):
    """VideoLLaMA samples (LAPA / ViPRA pretraining and co-training).

    history        uint8[B, W, R, R, 3]  frames t + offsets (e.g. t-2, t), clamped at the episode start
    history_valid  bool[B, W]            False where the offset fell before the episode start
    future         uint8[B, R, R, 3]     frame t+H ("latent state"), clamped at the episode end
    future_valid   bool[B]               False when t+H is past the end
    actions        float32[B, H, A]      normalized action chunk t..t+H-1 (gripper raw)
    action_pad_mask bool[B, H]           True where the action is real (all False for action-free video)
    action_valid   bool[B]               the action at t is real
    proprio        float32[B, P]         normalized proprio at t (zeros where the dataset has none)
    clip           uint8[B, L, R, R, 3]  optional (WindowSpec.vla_clip): LAM clip t, t+c, ..., t+(L-1)c
    clip_valid     bool[B, L]            optional: False for frames past the episode end
    """

    history: Array = None
    history_valid: Array = None
    future: Array = None
    future_valid: Array = None
    actions: Array = None
    action_pad_mask: Array = None
    action_valid: Array = None
    proprio: Array = None
    clip: Array = None
    clip_valid: Array = None
    RANK: ClassVar[dict[str, int]] = {"history": 5, "history_valid": 2, "future": 4, "future_valid": 1, "actions": 3,
                                      "action_pad_mask": 2, "action_valid": 1, "proprio": 2, "clip": 5,
                                      "clip_valid": 2}
    OPTIONAL: ClassVar[tuple[str, ...]] = ("clip", "clip_valid")


@dataclasses.dataclass(frozen=True)
class PolicyBatch(_Batch):
    """Policy fine-tuning samples.

    history        uint8[B, W, R, R, 3]  observation frames t + offsets
    history_valid  bool[B, W]
    wrist          uint8[B, Rw, Rw, 3]   wrist camera at t (zeros if absent or not requested)
    wrist_valid    bool[B]
    proprio        float32[B, P]
    actions        float32[B, H, A]      normalized action chunk t..t+H-1
    action_pad_mask bool[B, H]
    action_valid   bool[B]
    """

    history: Array = None
    history_valid: Array = None
    wrist: Array = None
    wrist_valid: Array = None
    proprio: Array = None
    actions: Array = None
    action_pad_mask: Array = None
    action_valid: Array = None
    RANK: ClassVar[dict[str, int]] = {"history": 5, "history_valid": 2, "wrist": 4, "wrist_valid": 1, "proprio": 2,
                                      "actions": 3, "action_pad_mask": 2, "action_valid": 1}


BATCH_TYPES: dict[str, type[_Batch]] = {"lam": LAMBatch, "vla": VLABatch, "policy": PolicyBatch}
