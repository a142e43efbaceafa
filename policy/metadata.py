"""The policy metadata record: the observation / action contract a policy publishes (``Policy.metadata()``, served
at ``/metadata``, stored in evaluation results).

    meta = PolicyMetadata.from_dict(policy.metadata())     # validates; reads older spellings too
    meta.image_size, meta.history_offsets, meta.action_dim, meta.chunk   # R, offsets (W = their number), A, H
    meta.to_dict()                                          # JSON-able, one name per field

One name per field: older policies and result files wrote ``image_resolution`` beside ``image_size`` and
``chunk_length`` beside ``chunk`` (same values). ``from_dict`` still reads them (so old metadata keeps loading) and
refuses a pair that disagrees; ``to_dict`` writes only ``image_size`` and ``chunk``. Keys the record does not know
(e.g. ``name`` of the evaluator's reference policies, ``frame_stride``) are kept in ``extra`` and written back
unchanged, so a policy can publish more than the contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core.jsonable import jsonable

__all__ = ["ALIASES", "GRIPPER_MODES", "PolicyMetadata"]

# old name -> the one name kept
ALIASES = {"image_resolution": "image_size", "chunk_length": "chunk"}
GRIPPER_MODES = ("clip", "binarize", "none")
_REQUIRED = ("image_size", "history_offsets", "action_dim", "chunk")


@dataclasses.dataclass(frozen=True)
class PolicyMetadata:
    """What a caller needs to feed a policy and read its output.

    image_size: R, frames are R x R RGB uint8. history_offsets: the frames' time offsets (<= 0), oldest first; W =
    len(history_offsets). action_dim: A. chunk: H, actions per call ([H, A], row 0 = now). The rest describes the
    checkpoint (recipe, step, sampler, normalization) and the gripper post-processing
    (``{"dim": d, "mode": "clip" | "binarize" | "none", "range": [lo, hi] or None}``)."""

    image_size: int
    history_offsets: tuple[int, ...]
    action_dim: int
    chunk: int
    recipe: str = ""
    preset: str = ""
    checkpoint: str = ""
    step: int | None = None
    execute_steps: int | None = None
    num_demos: int | None = None
    action_kind: str = ""
    latent_actions: tuple[int, int] | None = None
    instruction_template: str | None = None
    prompt_len: int | None = None
    sampler: dict[str, Any] | None = None
    dataset: str | None = None
    normalization: str | None = None
    gripper: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = {"image_size": (self.image_size, 1), "action_dim": (self.action_dim, 1), "chunk": (self.chunk, 0)}
        for name, (value, least) in sizes.items():  # chunk 0: a pretraining-only layout (no action output)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"policy metadata: {name} must be an integer >= {least}, got {value!r}")
        if not self.history_offsets or any(isinstance(o, bool) or not isinstance(o, int) or o > 0
                                           for o in self.history_offsets):
            raise ValueError(f"policy metadata: history_offsets must be a non-empty list of integers <= 0, got "
                             f"{list(self.history_offsets)}")
        if self.gripper is not None and self.gripper.get("mode") not in GRIPPER_MODES:
            raise ValueError(f"policy metadata: gripper mode {self.gripper.get('mode')!r} is not one of "
                             f"{list(GRIPPER_MODES)}")

    @property
    def num_frames(self) -> int:
        """W, the number of history frames per call."""
        return len(self.history_offsets)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyMetadata:
        """Reads a metadata dict (current or older spelling); missing or inconsistent fields raise ``ValueError``."""
        d = jsonable(dict(d))  # numpy scalars and arrays from a policy's own metadata() become plain values
        for old, new in ALIASES.items():
            if old in d:
                if new in d and d[new] != d[old]:
                    raise ValueError(f"policy metadata: {old}={d[old]!r} disagrees with {new}={d[new]!r} "
                                     f"({old} is the old name of {new})")
                d.setdefault(new, d[old])
                del d[old]
        missing = [k for k in _REQUIRED if d.get(k) is None]
        if missing:
            raise ValueError(f"policy metadata needs {list(_REQUIRED)}; missing {missing}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "num_frames"}
        if "num_frames" in d and d["num_frames"] != len(d["history_offsets"]):
            raise ValueError(f"policy metadata: num_frames={d['num_frames']} but history_offsets has "
                             f"{len(d['history_offsets'])} entries")
        known["history_offsets"] = tuple(known["history_offsets"])
        if known.get("latent_actions") is not None:
            known["latent_actions"] = tuple(known["latent_actions"])
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, one name per field (``num_frames`` included for readers; ``extra`` keys flattened)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["num_frames"] = self.num_frames
        return jsonable({**self.extra, **out})
