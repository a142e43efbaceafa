"""VQGAN recipe on the shared loop (tiny preset, synthetic frames), frame sampler, token caching, presets."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from training_utils import flip

from configs import vqgan as vqgan_configs
from latent_pretraining import vqgan_data, vqgan_train
from latent_pretraining.model import vqgan
from latent_pretraining.training.checkpoint import select_step


def _frames(n: int, res: int, seed: int = 0) -> np.ndarray:
    """Blocky synthetic scenes: a few coloured squares on a gradient background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:res, :res]
    out = np.zeros((n, res, res, 3), np.uint8)
    for i in range(n):
        img = np.stack([x * 255 // res, y * 255 // res, np.full_like(x, 128)], -1).astype(np.uint8)
        for _ in range(2):
            r, c = rng.integers(0, res - 4, 2)
            img[r:r + 4, c:c + 4] = rng.integers(0, 256, 3)
        out[i] = img
    return out


def test_tiny_training_run_exports_a_usable_tokenizer(tmp_path) -> None:
    cfg = vqgan_configs.get_config("tiny")
    with cfg.unlocked():
        cfg.train.total_steps = 2
        cfg.train.checkpoint.every = 2
        cfg.train.checkpoint.async_save = False
        cfg.train.log.progress = "off"
        cfg.train.log.tensorboard = False
        cfg.loss.gradient = 0.1
        cfg.loss.adversarial = 0.1
    frames = _frames(24, 16)
    res = vqgan_train.train(cfg, str(tmp_path), train_frames=frames, val=frames[:8])
    assert res.step == 2 and np.isfinite(res.metrics["loss"])
    assert {"l1", "commitment", "perplexity", "codes_used", "restarted", "g_adv", "d_hinge"} <= set(res.metrics)
    # step 1 seeds every unused code from the batch encodings
    assert res.metrics["restarted"] <= cfg.model.num_embeddings
    cfg_file, params = vqgan.load_tokenizer(str(tmp_path / "tokenizer.safetensors"))
    assert cfg_file == vqgan_train.model_config(cfg)
    assert "discriminator" not in params and params["quantize"]["embeddings"].shape == (8, 4)
    ids = vqgan.encode(params, frames[:2], config=cfg_file)
    assert ids.shape == (2, 8, 8)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["step"] == 2 and 0 < ev["codebook_used_frac"] <= 1 and ev["bits_per_image"] == 64 * 3
    assert (tmp_path / "recon.png").exists() and (tmp_path / "checkpoints" / "2").is_dir()
    cfg_ck, from_ckpt = vqgan_train.load_checkpoint_tokenizer(str(tmp_path))
    assert cfg_ck == cfg_file
    import jax

    jax.tree.map(np.testing.assert_array_equal, from_ckpt, params)
    # a corrupt newer checkpoint is skipped for the weights as for the config (it was restored silently)
    ck = tmp_path / "checkpoints"
    shutil.copytree(ck / "2", ck / "4")
    for data in (ck / "4" / "params").rglob("d/*"):  # the largest file may hold only the discriminator's params
        flip(data, n=1)
    assert select_step(str(ck)) == (2, [4])
    jax.tree.map(np.testing.assert_array_equal, vqgan_train.load_checkpoint_tokenizer(str(tmp_path))[1], params)


def test_frame_sampler_is_seeded_and_resumable() -> None:
    frames = _frames(20, 8)
    a = vqgan_data.FrameSampler(frames, 4, seed=3, flip=True)
    first = [next(a)["frames"] for _ in range(3)]
    b = vqgan_data.FrameSampler(frames, 4, seed=3, flip=True)
    next(b)
    state = b.get_state()
    c = vqgan_data.FrameSampler(frames, 4, seed=3, flip=True)
    c.set_state(state)
    np.testing.assert_array_equal(next(c)["frames"], first[1])
    with pytest.raises(ValueError, match="at least 32 frames"):
        vqgan_data.FrameSampler(frames, 32, seed=0)


def test_resize_baseline_and_psnr() -> None:
    frames = _frames(4, 16)
    same = vqgan_train.resize_baseline(frames, 16, "linear")
    assert np.abs(same.astype(int) - frames).max() <= 1
    assert vqgan_train.per_image_psnr(frames, frames).min() > 90
    small = vqgan_train.per_image_psnr(frames, vqgan_train.resize_baseline(frames, 2)).mean()
    assert 5 < small < vqgan_train.per_image_psnr(frames, vqgan_train.resize_baseline(frames, 8)).mean()


def test_cache_image_tokens_keyed_by_episode_and_step(tmp_path) -> None:
    from tests.rlds_fixtures import write_dataset

    write_dataset(str(tmp_path), "demo_robot", episodes=2, lengths=(3, 4), splits=("val",), shards=1, res=16)
    out = str(tmp_path / "tokens.npz")
    fake = lambda x: x[..., ::4, ::4, 0].astype(np.int32)  # uint8[b,16,16,3] -> [b,4,4]
    info = vqgan_data.cache_image_tokens(fake, str(tmp_path), ["demo_robot"], "val", 16, out, batch_size=4)
    assert info == {"frames": 7, "episodes": 2, "grid": (4, 4)}
    z = np.load(out)
    assert z["ids"].shape == (7, 4, 4) and z["ids"].dtype == np.int32
    np.testing.assert_array_equal(z["step"], [0, 1, 2, 0, 1, 2, 3])
    np.testing.assert_array_equal(z["episode"], [0, 0, 0, 1, 1, 1, 1])
    assert list(z["dataset_name"]) == ["demo_robot"] and len(z["episode_id"]) == 2
    _, frames = next(vqgan_data.iter_episodes(str(tmp_path), "demo_robot", "val", 16))
    np.testing.assert_array_equal(z["ids"][:3], fake(frames))


def test_presets_and_unknown_name() -> None:
    demo = vqgan_train.model_config(vqgan_configs.get_config("demo"))
    assert demo.token_grid(64) == (8, 8) and demo.num_embeddings == 1024
    lwm = vqgan_train.model_config(vqgan_configs.get_config("lwm"))
    assert lwm == vqgan.VQGANConfig() and lwm.token_grid(256) == (16, 16)
    with pytest.raises(ValueError, match="did you mean 'demo'"):
        vqgan_configs.get_config("dem")
    assert os.path.basename(vqgan_configs.__file__) == "vqgan.py"
