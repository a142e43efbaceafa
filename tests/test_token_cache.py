"""Token caches joined on the host (latent_pretraining/token_cache.py) give the ids the frozen tokenizers compute in
the train step: caches built by the real writers (vqgan_data.cache_image_tokens, lam.label.write_cache) on demo RLDS
data, compared with objective.tokenize on the same pipeline batches (LAPA and ViPRA debug configs)."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_assets import random_labeler
from vla_fixtures import write_tokenizers

from configs import lapa as lapa_configs
from configs import vipra as vipra_configs
from data.demo import writer
from lam.label import Labeler, write_cache
from latent_pretraining import objective, token_cache, vqgan_data
from latent_pretraining import train as vla_train
from latent_pretraining.model import vqgan

DATASETS = ("demo_robot", "demo_human")


def _labeler() -> tuple[Labeler, tuple]:
    """A random lapa_tiny LAM (clip_len 2, offset 3, 4 codes of 8): params drawn from the init's shapes, which is
    ~20x cheaper than compiling the init and labels just as deterministically."""
    return random_labeler("lapa_tiny")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("token_cache")
    data = str(root / "data")
    writer.write_datasets(data, writer.GenerationConfig(episodes=2, val_episodes=1, resolution=64, num_shards=1,
                                                        max_steps=16), progress=False)
    tok, vq_path = write_tokenizers(root)
    vq_cfg, vq_params = vqgan.load_tokenizer(vq_path)
    enc = jax.jit(lambda x: vqgan.encode_fn(vq_params, x, config=vq_cfg))
    for split in ("train", "val"):
        vqgan_data.cache_image_tokens(enc, data, DATASETS, split, 64, str(root / "tokens" / f"{split}.npz"),
                                      batch_size=64)
    out = {"data": data, "tokenizer": tok, "vqgan": vq_path, "image": str(root / "tokens" / "{split}.npz")}
    # One LAM (clip_len 2) for both recipes. With clip_len T > 2 (vipra_tiny has 4) the step labels the S transitions
    # in chunks of T-1 that share one T-frame clip, while the cache labels each transition t -> t+offset from the
    # T-frame clip starting at t: codes then differ (shapes and validity do not), so equality needs T = 2.
    lab, out["latent"] = _labeler()
    for name in DATASETS:
        for split in ("train", "val"):
            write_cache(lab, data, name, split, str(root / "labels"), batch_size=64)
    out["labels"] = str(root / "labels")
    return out


def _setup(module, assets: dict, batch_size: int = 16) -> vla_train.Setup:
    c = module.get_config("debug")
    c.text.tokenizer, c.vision.tokenizer, c.data.root = assets["tokenizer"], assets["vqgan"], assets["data"]
    c.data.shuffle_buffer, c.data.batch_size = 64, batch_size
    c.cache.image, c.cache.latent = assets["image"], assets["labels"]
    return vla_train.build(c, assets["latent"])




def _compare(setup: vla_train.Setup, split: str, batches: int) -> int:
    """Cached vs in-step ids on `batches` pipeline batches; returns how many rows had an invalid latent step."""
    plain_cfg = setup.config.copy_and_resolve_references()
    plain_cfg.cache.image, plain_cfg.cache.latent = "", ""
    plain = vla_train.host_batch_fn(dataclasses.replace(setup, config=plain_cfg), split)
    cached = vla_train.host_batch_fn(setup, split)
    it = vla_train.make_data(setup, split, seed=3)
    fn = jax.jit(lambda w, b: objective.tokenize(setup.frozen, w, b, setup.spec))
    tokenize = lambda b: jax.device_get(fn(setup.frozen_weights, {k: jnp.asarray(v) for k, v in b.items()}))
    clipped = 0
    for _ in range(batches):
        raw = next(it)
        a, b = plain(raw), cached(raw)
        assert "history" in a and not {"history", "future", "clip", "clip_valid"} & set(b), sorted(b)
        assert b["frame_ids"].dtype == np.int32 and b["latent_ids"].dtype == np.int32
        ta, tb = tokenize(a), tokenize(b)
        assert set(ta) == set(tb)
        assert len(np.unique(tb["frames"])) > 1 and len(np.unique(tb["latent"])) > 1  # not a degenerate tokenizer
        for k in ta:
            assert ta[k].shape == tb[k].shape, k
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
        np.testing.assert_array_equal(b["latent_valid"], raw.clip_valid[:, 1:])
        clipped += int((~tb["latent_valid"]).any(1).sum())
    return clipped


def test_lapa_cached_ids_equal_in_step_ids(assets) -> None:
    setup = _setup(lapa_configs, assets)
    assert setup.window.clip_stride == 3 and setup.spec.latent_steps == 1
    _compare(setup, "train", batches=2)
    _compare(setup, "val", batches=1)  # evaluate(): the {split} pattern and <labels>/<dataset>/val.npz


def test_vipra_cached_ids_equal_in_step_ids(assets) -> None:
    setup = _setup(vipra_configs, assets, batch_size=32)
    assert setup.spec.future_frame and setup.spec.latent_steps == 6 and setup.frozen.latent_clip_len == 2
    assert setup.window.clip_stride == 3  # transitions t+3k -> t+3(k+1): the LAM's offset
    assert _compare(setup, "train", batches=2) > 0  # episode ends (clamped frames, invalid transitions) were covered


def test_errors_name_the_episode_and_the_mismatch(assets, tmp_path) -> None:
    setup = _setup(lapa_configs, assets, batch_size=8)
    raw = next(vla_train.make_data(setup, "train", seed=0)).to_dict()
    # a cache of another split: the train episodes are not in it
    join = token_cache.TokenCacheJoin(image=assets["image"].format(split="val"), datasets=DATASETS,
                                      window=setup.window, spec=setup.spec, split="train")
    with pytest.raises(KeyError, match=r"has no episode -?\d+ of dataset 'demo_(robot|human)'"):
        join(raw)
    join = token_cache.TokenCacheJoin(latent=assets["labels"], datasets=DATASETS, window=setup.window,
                                      spec=setup.spec, split="val")
    with pytest.raises(KeyError, match=r"latent-action cache .* has no episode"):
        join(raw)
    # image-only join: latents still come from the LAM in the step
    out = token_cache.TokenCacheJoin(image=assets["image"].format(split="train"), datasets=DATASETS,
                                     window=setup.window, spec=setup.spec)(raw)
    assert "frame_ids" in out and "clip" in out and "latent_ids" not in out
    bad = dataclasses.replace(setup.spec, tokens_per_frame=setup.spec.tokens_per_frame * 4)
    with pytest.raises(ValueError, match="grid"):
        token_cache.TokenCacheJoin(image=assets["image"].format(split="train"), datasets=DATASETS,
                                   window=setup.window, spec=bad)
    bad = dataclasses.replace(setup.spec, codes_per_step=16)
    with pytest.raises(ValueError, match="codes per transition"):
        token_cache.TokenCacheJoin(latent=assets["labels"], datasets=DATASETS, window=setup.window, spec=bad)
    with pytest.raises(ValueError, match="labels transitions t -> t\\+3 but the window"):
        token_cache.TokenCacheJoin(latent=assets["labels"], datasets=DATASETS,
                                   window=dataclasses.replace(setup.window, clip_stride=1), spec=setup.spec)
    shutil.copytree(assets["labels"], tmp_path / "labels")  # ids whose metadata an interrupted relabelling removed
    (tmp_path / "labels" / DATASETS[0] / "train.json").unlink()
    with pytest.raises(ValueError, match=r"has no \.json metadata beside it"):
        token_cache.TokenCacheJoin(latent=str(tmp_path / "labels"), datasets=DATASETS, window=setup.window,
                                   spec=setup.spec)


def test_augmentation_changes_training_frames_only_and_refuses_a_token_cache(assets) -> None:
    """`data.augment` (latent_pretraining.train.make_data train=True): the training batches' frames are cropped and
    jittered, everything else in them is unchanged; evaluation batches never are; with an image token cache (ids of
    un-augmented frames) it is refused in one line instead of silently doing nothing."""
    setup = _setup(vipra_configs, assets, batch_size=8)
    setup.config.data.augment.enabled = True
    with pytest.raises(ValueError, match=r"augment.*cache\.image"):
        vla_train.make_data(setup, "train", seed=0, train=True)
    setup.config.cache.image = setup.config.cache.latent = ""
    plain, aug = (next(vla_train.make_data(setup, "train", seed=0, train=t)).to_dict() for t in (False, True))
    assert set(plain) == set(aug)
    for k in plain:
        if k in ("history", "future", "clip"):
            assert plain[k].shape == aug[k].shape and plain[k].dtype == aug[k].dtype == np.uint8, k
            diff = np.abs(plain[k].astype(int) - aug[k].astype(int))
            assert diff.mean() > 1.0 and (diff > 0).mean() > 0.5, (k, diff.mean())  # not a near-identity
        else:
            np.testing.assert_array_equal(plain[k], aug[k], err_msg=k)
    # two frames of one sample share a crop: a static background pixel stays equal across the sample's frames
    h = aug["history"]
    assert np.mean(h[:, 0] == h[:, -1]) > 0.5
    again = next(vla_train.make_data(setup, "train", seed=0, train=True)).to_dict()
    np.testing.assert_array_equal(again["history"], aug["history"])  # seeded: the same batch again
    ev = next(vla_train.make_data(setup, "val", seed=0)).to_dict()  # evaluation: train=False, never augmented
    setup.config.data.augment.enabled = False
    ev_plain = next(vla_train.make_data(setup, "val", seed=0)).to_dict()
    np.testing.assert_array_equal(ev["history"], ev_plain["history"])
