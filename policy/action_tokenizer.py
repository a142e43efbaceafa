"""Per-dimension quantile action bins (LAPA fine-tuning): continuous actions <-> int32 bin ids, edges as JSON.

    tok = ActionTokenizer.fit(actions f32[N, A], num_bins=256)     # quantile edges per dimension
    ids = tok.encode(actions f32[..., A])                           # int32[..., A] in [0, num_bins)
    actions = tok.decode(ids)                                       # bin centres f32[..., A]
    tok.to_json() / ActionTokenizer.from_json(s)                    # a checkpoint asset ("action_bins.json")

Edges are quantiles of the (normalized) training actions, so every bin holds about the same number of samples (LAPA's
pandas `qcut`); a dimension with fewer distinct values than bins gets fewer, wider bins (duplicate edges collapse, the
unused ids are never produced). Values outside the training range fall into the first / last bin.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class ActionTokenizer:
    """edges: float64[A, num_bins + 1] per-dimension bin edges (non-decreasing)."""

    edges: np.ndarray

    @property
    def num_bins(self) -> int:
        return int(self.edges.shape[1] - 1)

    @property
    def action_dim(self) -> int:
        return int(self.edges.shape[0])

    @classmethod
    def fit(cls, actions: np.ndarray, num_bins: int = 256) -> ActionTokenizer:
        """Quantile edges from actions f32[N, A] (rows with NaN are rejected)."""
        a = np.asarray(actions, np.float64)
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"ActionTokenizer.fit: expected actions [N, A] with N > 0, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("ActionTokenizer.fit: actions contain NaN or inf")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        return cls(np.quantile(a, np.linspace(0.0, 1.0, num_bins + 1), axis=0).T.copy())

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """f32[..., A] -> int32[..., A]: the bin holding each value (right-closed inner edges, clipped)."""
        a = np.asarray(actions, np.float64)
        if a.shape[-1] != self.action_dim:
            raise ValueError(f"actions [..., {self.action_dim}] expected, got shape {a.shape}")
        out = np.empty(a.shape, np.int32)
        for d in range(self.action_dim):
            inner = self.edges[d, 1:-1]
            # duplicate edges: searchsorted 'left' puts a value equal to a repeated edge in the first bin of the run
            out[..., d] = np.searchsorted(inner, a[..., d], side="left")
        return np.clip(out, 0, self.num_bins - 1)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """int[..., A] -> f32[..., A] bin centres (out-of-range ids are clipped)."""
        ids = np.clip(np.asarray(ids), 0, self.num_bins - 1)
        centres = 0.5 * (self.edges[:, :-1] + self.edges[:, 1:])  # [A, num_bins]
        return np.stack([centres[d][ids[..., d]] for d in range(self.action_dim)], -1).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps({"format": "action-bins-v1", "num_bins": self.num_bins, "edges": self.edges.tolist()})

    @classmethod
    def from_json(cls, text: str | bytes) -> ActionTokenizer:
        d = json.loads(text)
        if d.get("format") != "action-bins-v1":
            raise ValueError(f"not an action-bins file (format {d.get('format')!r}, expected 'action-bins-v1')")
        edges = np.asarray(d["edges"], np.float64)
        if edges.ndim != 2 or edges.shape[1] != d["num_bins"] + 1 or (np.diff(edges, axis=1) < 0).any():
            raise ValueError(f"action-bins file: edges must be [A, num_bins + 1] and non-decreasing, got {edges.shape}")
        return cls(edges)


# ---------------------------------------------- the policy side: bin ids back to actions from action_bins.json
def bin_centers(bins: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
    """Per-dimension bin centres from action_bins.json: {"edges": [[...] per dim], ...} (policy/action_tokenizer.py
    "action-bins-v1", LAPA: centre of bin k = (e[k] + e[k+1]) / 2), {"centers": [[...] per dim]}, or a bare list
    of edge lists. Edges are over NORMALIZED actions unless the file says {"normalized": false}."""
    if isinstance(bins, Mapping) and "centers" in bins:
        return [np.asarray(c, np.float32) for c in bins["centers"]]
    edges = bins["edges"] if isinstance(bins, Mapping) else bins
    out = []
    for e in edges:
        e = np.asarray([x for x in e if x is not None and x != ""], np.float64)
        if e.size < 2:
            raise ValueError(f"action_bins.json: a dimension has {e.size} edges (need >= 2)")
        out.append(((e[:-1] + e[1:]) / 2).astype(np.float32))
    return out


def decode_bins(ids: np.ndarray, centers: Sequence[np.ndarray]) -> np.ndarray:
    """int[..., H·A] bin ids (H-major, A = len(centers)) -> f32[..., H, A] bin centres (ids clipped into range,
    unlike LAPA's `return 1` on an out-of-range id)."""
    a = len(centers)
    ids = np.asarray(ids)
    if ids.shape[-1] % a:
        raise ValueError(f"{ids.shape[-1]} action tokens are not a multiple of {a} action dimensions")
    ids = ids.reshape(*ids.shape[:-1], ids.shape[-1] // a, a)
    out = np.empty(ids.shape, np.float32)
    for d, c in enumerate(centers):
        out[..., d] = c[np.clip(ids[..., d], 0, len(c) - 1)]
    return out
