"""Config contracts: every VideoLLaMA / policy preset exposes every LLaMA field, and overrides reach the model."""

import pytest

from configs import lapa, policy, vipra
from latent_pretraining.train import _llama_config

PRESETS = [(lapa, p) for p in lapa.PRESETS] + [(vipra, p) for p in vipra.PRESETS] + [
    (policy, p) for p in policy.PRESETS]


@pytest.mark.parametrize(("module", "preset"), PRESETS, ids=lambda x: getattr(x, "__name__", x))
def test_llama_overrides_reach_the_model(module, preset):
    """Regression: `scan_layers=False` (== 0) was dropped as "keep the preset"; attention_impl existed only in 7b."""
    config = module.get_config(preset)
    assert "attention_impl" in config.model.llama
    config.model.llama.scan_layers = False
    config.model.llama.attention_impl = "cudnn"
    config.model.llama.num_kv_heads = 0  # an explicit 0 is a value, not "keep the preset"
    llama = _llama_config(config, vocab=100)
    assert llama.scan_layers is False
    assert llama.attention_impl == "cudnn"
    assert llama.num_kv_heads == 0


def test_unset_llama_fields_keep_the_size_preset():
    config = lapa.get_config("7b")
    llama = _llama_config(config, vocab=100)
    assert (llama.hidden_size, llama.num_layers, llama.rope_theta) == (4096, 32, 5e7)
