"""VQGAN model: LWM param layout, encode/decode shapes/dtypes, sharded == unsharded, file round trip, EMA codebook."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from latent_pretraining.model import vqgan
from latent_pretraining.training import mesh as mesh_lib
from latent_pretraining.vqgan_train import ema_codebook_update

TINY = vqgan.VQGANConfig(resolution=16, hidden_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=8,
                         num_embeddings=16, embed_dim=4, num_groups=4)


@pytest.fixture(scope="module")
def params():
    return vqgan.init_params(TINY, 0)


def _flat(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(str(k.key) for k in p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_lwm_layout_names_and_shapes() -> None:
    cfg = vqgan.VQGANConfig()  # the released architecture
    assert cfg.downsample == 16 and cfg.token_grid(256) == (16, 16)
    flat = _flat(vqgan.param_shapes(cfg))
    expected = {
        "quantize/embeddings": (8192, 64),
        "quant_conv/kernel": (1, 1, 64, 64),
        "post_quant_conv/kernel": (1, 1, 64, 64),
        "encoder/Conv_0/kernel": (3, 3, 3, 128),
        "encoder/DownsamplingBlock_1/ResnetBlock_0/Conv_2/kernel": (1, 1, 128, 256),
        "encoder/DownsamplingBlock_3/Downsample_0/Conv_0/kernel": (3, 3, 512, 512),
        "encoder/MidBlock_0/ResnetBlock_1/GroupNorm_1/scale": (768,),
        "encoder/Conv_1/kernel": (3, 3, 768, 64),
        "decoder/Conv_0/kernel": (3, 3, 64, 768),
        "decoder/UpsamplingBlock_0/ResnetBlock_2/Conv_1/kernel": (3, 3, 768, 768),  # level 4 (deepest) first
        "decoder/UpsamplingBlock_0/Upsample_0/Conv_0/kernel": (3, 3, 768, 768),
        "decoder/UpsamplingBlock_4/ResnetBlock_0/Conv_2/kernel": (1, 1, 256, 128),  # level 0
        "decoder/Conv_1/kernel": (3, 3, 128, 3),
    }
    for k, shape in expected.items():
        assert flat.get(k) == shape, (k, flat.get(k))
    assert "encoder/DownsamplingBlock_4/Downsample_0/Conv_0/kernel" not in flat
    assert "decoder/UpsamplingBlock_4/Upsample_0/Conv_0/kernel" not in flat
    assert len(flat) == 277


def test_encode_decode_shapes_dtypes(params) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ids = vqgan.encode(params, frames, config=TINY)
    assert ids.shape == (3, 4, 4) and ids.dtype == jnp.int32
    assert int(ids.min()) >= 0 and int(ids.max()) < TINY.num_embeddings
    rec = vqgan.decode(params, ids, config=TINY)
    assert rec.shape == (3, 16, 16, 3) and rec.dtype == jnp.uint8
    recf = vqgan.decode(params, ids, config=TINY, as_uint8=False)
    assert recf.dtype == jnp.float32 and float(jnp.abs(recf).max()) <= 1.0
    # float input in [-1, 1] is the same image as uint8 input
    np.testing.assert_array_equal(vqgan.encode(params, frames.astype(np.float32) / 127.5 - 1.0, config=TINY), ids)
    # leading dims are flattened: video [B, T, H, W, 3] -> [B, T, h, w]
    video = np.stack([frames, frames[::-1]], 1)
    vids = vqgan.encode(params, video, config=TINY)
    assert vids.shape == (3, 2, 4, 4)
    np.testing.assert_array_equal(vids[:, 0], ids)
    assert vqgan.decode(params, vids, config=TINY).shape == (3, 2, 16, 16, 3)
    # sizes must be multiples of the downsampling factor (non-square is fine)
    with pytest.raises(ValueError, match="multiple of the VQGAN downsampling factor 4"):
        vqgan.encode(params, np.zeros((1, 10, 16, 3), np.uint8), config=TINY)


def test_sharded_encode_equals_unsharded(params) -> None:
    mesh = mesh_lib.make_mesh({"dp": 2, "fsdp": 4, "tp": 1, "sp": 1})
    frames = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    ref = np.asarray(vqgan.encode(params, frames, config=TINY))
    x = jax.device_put(frames, NamedSharding(mesh, P(("dp", "fsdp"))))
    ids = vqgan.make_encode_fn(TINY, mesh)(params, x)
    assert len(ids.sharding.device_set) == 8 and ids.sharding.spec[0] == ("dp", "fsdp")
    np.testing.assert_array_equal(np.asarray(ids), ref)
    rec = vqgan.make_decode_fn(TINY, mesh)(params, ids)
    # decoding is float math compiled for another layout: allow a rounding step of 1/255
    np.testing.assert_allclose(np.asarray(rec, np.int32), np.asarray(vqgan.decode(params, ref, config=TINY), np.int32),
                               atol=1)


def test_tokenizer_file_round_trip(params, tmp_path) -> None:
    path = str(tmp_path / "tok.safetensors")
    vqgan.save_tokenizer(path, params, TINY, extra={"note": "test"})
    cfg, loaded = vqgan.load_tokenizer(path)
    assert cfg == TINY
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
    bad = dict(loaded, quant_conv={"kernel": np.zeros((1, 1, 8, 5), np.float32), "bias": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match=r"quant_conv/(kernel|bias)' has shape"):
        vqgan.check_params(bad, TINY)
    with pytest.raises(FileNotFoundError):
        vqgan.load_tokenizer(str(tmp_path / "missing.safetensors"))


def test_ema_update_restarts_dead_codes_from_batch() -> None:
    k, d = 6, 2
    vq = {"quantize": {"embeddings": jnp.zeros((k, d)), "cluster_size": jnp.array([5.0, 5.0, 0, 0, 0, 0]),
                       "embed_sum": jnp.zeros((k, d))}}
    z = jnp.array([[1.0, 1.0], [1.0, 1.0], [3.0, 3.0], [3.0, 3.0]])
    ids = jnp.array([0, 0, 1, 1])
    new, m = ema_codebook_update(vq, z, ids, jax.random.PRNGKey(0), decay=0.5, dead_threshold=0.1)
    q = new["quantize"]
    np.testing.assert_allclose(q["cluster_size"][:2], [3.5, 3.5])
    np.testing.assert_allclose(q["embeddings"][0], 2 * 0.5 / 3.5 * np.ones(2), rtol=1e-6)  # es/cs
    assert float(m["restarted"]) == 4 and float(m["codes_used"]) == pytest.approx(2 / 6)
    assert float(m["perplexity"]) == pytest.approx(2.0)
    rows = {tuple(np.asarray(r)) for r in q["embeddings"][2:]}
    assert rows <= {(1.0, 1.0), (3.0, 3.0)}  # restarted codes sit on batch encodings
    np.testing.assert_allclose(q["cluster_size"][2:], 1.0)
    # the same rng gives the same codebook (every device computes the same global update)
    again, _ = ema_codebook_update(vq, z, ids, jax.random.PRNGKey(0), decay=0.5, dead_threshold=0.1)
    np.testing.assert_array_equal(again["quantize"]["embeddings"], q["embeddings"])
