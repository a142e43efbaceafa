"""Quantile action bins: equal-mass bins, round trip within a bin width, constant dims, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from policy.action_tokenizer import ActionTokenizer


def test_quantile_bins_round_trip_and_balance() -> None:
    rng = np.random.default_rng(0)
    a = np.stack([rng.normal(size=20_000), rng.uniform(-1, 1, 20_000), np.ones(20_000)], -1)  # last dim constant
    tok = ActionTokenizer.fit(a, num_bins=16)
    ids = tok.encode(a)
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 16
    counts = np.bincount(ids[:, 0], minlength=16)
    assert counts.min() > 0.9 * len(a) / 16 and counts.max() < 1.1 * len(a) / 16  # equal mass
    err = np.abs(tok.decode(ids) - a)
    width = np.diff(tok.edges, axis=1)
    assert (err[:, 1] <= width[1].max() / 2 + 1e-9).all()
    np.testing.assert_allclose(tok.decode(ids)[:, 2], 1.0)  # a constant dimension decodes exactly
    again = ActionTokenizer.from_json(tok.to_json())
    np.testing.assert_array_equal(again.encode(a), ids)
    assert tok.encode(np.full((1, 3), 1e9))[0, 0] == 15 and tok.encode(np.full((1, 3), -1e9))[0, 0] == 0


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="NaN"):
        ActionTokenizer.fit(np.asarray([[np.nan, 1.0]]))
    tok = ActionTokenizer.fit(np.random.default_rng(0).normal(size=(100, 2)), num_bins=4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        tok.encode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="format"):
        ActionTokenizer.from_json('{"format": "x"}')
