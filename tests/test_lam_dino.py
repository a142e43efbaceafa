"""Flax DINOv2 (with and without registers) equals transformers' model with random weights."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("registers", [0, 2])
def test_dinov2_matches_transformers(registers: int) -> None:
    import jax.numpy as jnp

    from lam.dino import Dinov2, convert_hf

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=28,
              patch_size=14, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    if registers:
        hf = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            num_register_tokens=registers, **kw))
    else:
        hf = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    with torch.no_grad():
        for p in hf.parameters():  # randomize everything (HF zero-initialises tokens, layer scales are constant)
            p.copy_(torch.randn_like(p) * 0.5)
    hf.eval()
    cfg = ml_collections.ConfigDict({"hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_ratio": 4.0,
                                     "patch_size": 14, "image_size": 28, "num_register_tokens": registers,
                                     "layer_norm_eps": 1e-6, "layerscale_value": 1.0})
    params = convert_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg)
    x = np.random.default_rng(0).normal(size=(2, 3, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    ours = np.asarray(Dinov2(cfg).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert ours.shape == ref.shape == (2, 1 + registers + 4, 32)
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=2e-4)
