"""VideoLLaMA training: one optimizer step lowers the loss on a fixed batch (frozen VQGAN + LAM inside the step), and
an end-to-end run on real demo RLDS shards that starts from a tiny checkpoint written by `from-lwm`."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from shared_assets import tiny_labeler
from vla_fixtures import write_tokenizers

from configs import lam as lam_configs
from configs import lapa as lapa_configs
from configs import vipra as vipra_configs
from lam import train as lam_train
from lam.label import Labeler
from latent_pretraining import objective
from latent_pretraining import train as vla_train
from latent_pretraining.convert import checkpoint as ckpt_convert
from latent_pretraining.convert.lwm import convert_from_lwm, write_lwm_params
from latent_pretraining.model.video_llama import init_params


@pytest.fixture(scope="module")
def assets(tmp_path_factory, demo_data) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vla")
    tok, vq_path = write_tokenizers(root)
    return {"data": demo_data, "tokenizer": tok, "vqgan": vq_path, "root": str(root)}


def _labeler(preset: str) -> tuple:
    """A frozen random LAM (weights from the init's shapes, no init compile): the trainer only needs its labels."""
    return tiny_labeler(preset)


def _config(module, assets: dict[str, str]):
    c = module.get_config("debug")
    c.text.tokenizer, c.vision.tokenizer, c.data.root = assets["tokenizer"], assets["vqgan"], assets["data"]
    c.data.shuffle_buffer = 64
    c.train.checkpoint.async_save = False
    c.train.log.progress = "off"
    c.train.log.tensorboard = False
    return c


def _batch(setup: vla_train.Setup, b: int = 4) -> dict:
    rng = np.random.default_rng(0)
    w, h = setup.spec.num_frames, setup.config.data.horizon
    frames = lambda *s: rng.integers(0, 256, (*s, 64, 64, 3), dtype=np.uint8)
    ids, mask = setup.tokenizer.encode_batch(["push the red block to the left"] * b, setup.spec.prompt_len)
    return {"history": frames(b, w), "future": frames(b), "clip": frames(b, setup.window.clip_len),
            "clip_valid": np.ones((b, setup.window.clip_len), bool),
            "actions": rng.normal(size=(b, h, 7)).astype(np.float32), "action_pad_mask": np.ones((b, h), bool),
            "action_valid": np.asarray([True, False] * (b // 2)), "prompt_ids": ids, "prompt_mask": mask}


def test_optimizer_steps_lower_the_loss_on_a_fixed_batch(assets) -> None:
    config = _config(vipra_configs, assets)
    config.cotrain_fraction = 1.0  # rows with actions take the action suffix: all heads + flow in one batch
    setup = vla_train.build(config, _labeler("vipra_tiny"))
    params = init_params(setup.model_config, jax.random.PRNGKey(0))["params"]
    state = {"frozen": setup.frozen_weights}
    loss_fn = objective.make_loss_fn(setup.model, setup.spec, setup.frozen, dict(config.loss), setup.flow, 1.0)
    batch = jax.tree.map(jnp.asarray, _batch(setup))
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        (loss, (m, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.PRNGKey(1), state)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss, m

    params, opt, first, m = step(params, opt)
    for key in ("loss_text", "loss_vision", "loss_latent", "loss_flow"):
        assert np.isfinite(float(m[key])) and float(m[key]) > 0, key
    assert float(m["action_rows"]) == 0.5
    for _ in range(4):
        params, opt, loss, m = step(params, opt)
    assert float(loss) < float(first) - 0.05, (float(first), float(loss))


def test_lapa_trains_from_a_from_lwm_checkpoint(assets, tmp_path) -> None:
    config = _config(lapa_configs, assets)
    latent = _labeler("lapa_tiny")
    setup = vla_train.build(config, latent)
    # a LAPA-layout params file: lineage names (dte / delta_head), extra tables under transformer/ in the stream
    ours = jax.device_get(init_params(setup.model_config, jax.random.PRNGKey(7))["params"])
    lineage = dict(ours)
    lineage["dte"] = lineage.pop("late")
    lineage["delta_head"] = lineage.pop("latent_actions_head")
    del lineage["vision_head"]  # missing in the file: must be initialised fresh and reported
    src = tmp_path / "streaming_params"
    write_lwm_params(src, lineage, dtype="float32")
    cfg = convert_from_lwm(src, tmp_path / "converted", head_dim=setup.model_config.llama.dim_per_head,
                           rope_theta=setup.model_config.llama.rope_theta)
    assert cfg.vocab_size == setup.model_config.llama.vocab_size
    config.init.checkpoint = str(tmp_path / "converted")
    config.train.optimizer.lr = 0.0  # params must stay exactly what was loaded
    config.train.total_steps = 2
    summary = vla_train.train(config, str(tmp_path / "run"), overwrite=True, latent=latent)
    assert summary["steps"] == 2 and np.isfinite(summary["eval"]["loss_latent"])
    assert summary["eval"]["latent_chance"] == 1 / 8 and 0 < summary["eval"]["latent_majority"] <= 1
    from latent_pretraining.training.checkpoint import load_params, read_assets

    trained = load_params(os.path.join(tmp_path, "run", "checkpoints"))
    np.testing.assert_array_equal(trained["late"]["embedding"], ours["late"]["embedding"])
    np.testing.assert_array_equal(trained["transformer"]["wte"]["embedding"], ours["transformer"]["wte"]["embedding"])
    report = json.loads(read_assets(os.path.join(tmp_path, "run", "checkpoints"))["partial_load.json"])
    assert any("vision_head" in p for p in report["missing"]), report
    assert os.path.exists(tmp_path / "run" / "curves.json") and os.path.exists(tmp_path / "run" / "summary.json")
    params, _ = ckpt_convert.load_checkpoint(tmp_path / "converted")
    assert "dte" in params  # conversion keeps the file's names; train.py maps them (from_lineage)


@pytest.mark.slow  # a 1-step LAM run (~45 s on a busy 2-core CPU); fast counterpart: tests/test_lam_api.py
def test_the_trainer_loads_the_frozen_lam_through_lam_api(assets, tmp_path) -> None:
    """`--config.latent.lam_workdir` reaches a trained LAM run through lam.api (no hook in the config file), and the
    labeler equals one built from that checkpoint's variables."""
    cfg = lam_configs.get_config("lapa_tiny")
    cfg.data.root, cfg.data.cache_dir, cfg.data.batch_size = assets["data"], "", 8
    cfg.train.total_steps = cfg.train.checkpoint.every = 1
    cfg.train.checkpoint.async_save, cfg.train.log.progress, cfg.train.log.tensorboard = False, "off", False
    lam_train.train(cfg, str(tmp_path / "lam"), overwrite=True)
    config = _config(lapa_configs, assets)
    config.latent.lam_workdir = ""
    assert vla_train.load_latent(config) is None
    config.latent.lam_workdir, config.latent.step = str(tmp_path / "lam"), -1
    fn, variables, info = vla_train.load_latent(config)
    assert info == {"codebook_size": 8, "codes_per_step": 4, "clip_len": 2, "offset": 3, "preset": "lapa_tiny",
                    "workdir": str(tmp_path / "lam"), "step": 1}
    clip = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 2, 64, 64, 3), dtype=np.uint8))
    from lam.label import load_lam

    lam_config, lam_vars = load_lam(str(tmp_path / "lam"), 1)
    np.testing.assert_array_equal(fn(variables, clip), Labeler(lam_config, lam_vars)(clip))
    assert fn(variables, clip).shape == (2, 1, 4)
