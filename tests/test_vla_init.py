"""`model.vision_embed_init="codebook"` (latent_pretraining.train.codebook_embedding): the VQGAN codes' rows of a
fresh vision table are a projection of the codebook, so look-alike codes start alike; special rows keep their init."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from configs import policy as policy_configs
from core.errors import UserError
from latent_pretraining.train import codebook_embedding


def _cos(a: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return a @ a.T


def test_codebook_rows_keep_the_codebook_geometry_and_the_init_scale() -> None:
    rng = np.random.default_rng(0)
    k, c, d = 64, 8, 48
    codebook = rng.normal(size=(k, c)).astype(np.float32) + 3.0  # an offset the centring removes
    codebook[1] = codebook[0] + 0.01  # two look-alike codes
    table = jax.random.normal(jax.random.PRNGKey(1), (k + 2, d)) * 0.02
    out = np.asarray(codebook_embedding(table, codebook, jax.random.PRNGKey(2)))
    assert out.shape == table.shape
    np.testing.assert_array_equal(out[k:], np.asarray(table)[k:])  # eof / eov rows untouched
    assert abs(out[:k].std() - 0.02) < 0.002  # the table's init scale
    iu = np.triu_indices(k, 1)
    centred = codebook - codebook.mean(0)
    assert np.corrcoef(_cos(out[:k])[iu], _cos(centred)[iu])[0, 1] > 0.9  # similarity structure carried over
    assert _cos(out[:2])[0, 1] > 0.99 and np.abs(_cos(np.asarray(table)[:k])[iu]).mean() < 0.3
    again = np.asarray(codebook_embedding(table, codebook, jax.random.PRNGKey(2)))
    np.testing.assert_array_equal(out, again)


def test_an_unknown_init_is_refused_by_name() -> None:
    from latent_pretraining import train as vla_train

    c = policy_configs.get_config("scratch_demo")
    assert c.model.vision_embed_init == "normal" and c.data.augment.enabled is False  # defaults: the old behaviour
    c.model.vision_embed_init = "codebok"

    setup = types.SimpleNamespace(config=c, frozen_weights={})  # make_init_fn reads only these before the check
    with pytest.raises(UserError, match="codebok"):
        vla_train.make_init_fn(setup)
