"""lam.api as the VideoLLaMA trainer uses it (`--config.latent.lam_workdir`): the fast counterpart of
test_vla_train::test_the_trainer_loads_the_frozen_lam_through_lam_api, on a checkpoint written the way lam.train writes
it (the training Checkpointer; params, nsvq model state with a non-zero replacement shift, config.json) but with
random weights instead of a training step. That lam.train's own checkpoints load is covered by
test_real_layouts::test_lam_train_evaluate_label_on_bridge."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_assets import random_labeler
from training_utils import flip, params_data_file

from configs import lam as lam_configs
from configs import lapa as lapa_configs
from lam.label import Labeler, load_lam
from lam.train import QUANTIZER
from latent_pretraining import train as vla_train
from latent_pretraining.training.checkpoint import CheckpointCorruptError, Checkpointer
from latent_pretraining.training.loop import _config_json
from latent_pretraining.training.state import TrainState


def _write_lam_run(workdir: str, step: int, scale: float = 1.0) -> Labeler:
    """A lapa_tiny LAM run with one checkpoint at `step` (float params times `scale`; a second call adds a second
    checkpoint to the run); returns the labeler of the random weights before scaling."""
    cfg = lam_configs.get_config("lapa_tiny")
    cfg.data.cache_dir = ""
    lab, (_, folded, _) = random_labeler("lapa_tiny")
    params = jax.tree.map(lambda x: np.asarray(x) * scale if np.issubdtype(x.dtype, np.floating) else np.asarray(x),
                          dict(folded["params"]))
    quantizer = dict(params["quantizer"])
    nsvq = jax.tree.map(np.asarray, dict(folded["nsvq"][QUANTIZER]))
    shift = np.random.default_rng(1).normal(size=nsvq["shift"].shape).astype(nsvq["shift"].dtype)
    # as training leaves it: part of the codebook still in the replacement shift (load_lam must fold it back)
    quantizer["codebook"] = quantizer["codebook"] - shift
    nsvq["shift"] = shift
    params["quantizer"] = quantizer
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state={}, rng=jax.random.PRNGKey(0),
                       ema_params=None, model_state={"nsvq": {QUANTIZER: nsvq}})
    ck = Checkpointer(f"{workdir}/checkpoints", async_save=False)
    ck.save(state, assets={"config.json": _config_json(cfg)})
    ck.close()
    return lab


def test_the_trainer_loads_a_lam_checkpoint_through_lam_api(tmp_path) -> None:
    workdir = str(tmp_path / "lam")
    lab = _write_lam_run(workdir, step=3)
    config = lapa_configs.get_config("debug")
    config.latent.lam_workdir = ""
    assert vla_train.load_latent(config) is None
    config.latent.lam_workdir, config.latent.step = workdir, -1
    fn, variables, info = vla_train.load_latent(config)
    assert info == {"codebook_size": 8, "codes_per_step": 4, "clip_len": 2, "offset": 3, "preset": "lapa_tiny",
                    "workdir": workdir, "step": 3}
    clip = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 2, 64, 64, 3), dtype=np.uint8))
    lam_config, lam_vars = load_lam(workdir, 3)
    ids = np.asarray(fn(variables, clip))
    assert ids.shape == (2, 1, 4)
    np.testing.assert_array_equal(ids, Labeler(lam_config, lam_vars)(clip))
    np.testing.assert_array_equal(ids, lab(clip))  # the shift was folded back: the labels of the weights written


def test_a_corrupt_newest_checkpoint_is_skipped_for_config_and_weights_alike(tmp_path) -> None:
    """load_lam (lam.evaluate, label_latent_actions, the VideoLLaMA trainer's frozen LAM) read the config of the
    newest intact checkpoint but restored the weights of the newest one, intact or not."""
    workdir = str(tmp_path / "lam")
    _write_lam_run(workdir, step=3)
    _write_lam_run(workdir, step=5, scale=-1.0)
    config, newest = load_lam(workdir)
    assert config.checkpoint_step == 5
    _, older = load_lam(workdir, 3)
    assert not np.array_equal(newest["params"]["quantizer"]["codebook"], older["params"]["quantizer"]["codebook"])
    flip(params_data_file(pathlib.Path(workdir) / "checkpoints" / "5"), n=1)  # one byte of the newest params
    config, variables = load_lam(workdir)
    assert config.checkpoint_step == 3
    jax.tree.map(np.testing.assert_array_equal, variables, older)
    with pytest.raises(CheckpointCorruptError, match="/5 is corrupt"):
        load_lam(workdir, 5)  # asked for by number: refused, not restored silently wrong
