"""HF LlamaForCausalLM <-> ours: logits equality both ways, bit-exact weight round trip, sidecar extras, the CLI."""

import functools
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from latent_pretraining.convert import hf_llama
from latent_pretraining.convert.checkpoint import load_checkpoint, save_checkpoint
from latent_pretraining.model.llama import LlamaForCausalLM, random_params
from latent_pretraining.model.llama_config import preset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import convert_checkpoint  # noqa: E402

VOCAB, B, T = 96, 2, 8
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (B, T))


def make_hf(gqa: bool, tie: bool, seed: int = 0) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2 if gqa else 4, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=5e5,
        initializer_range=0.1, tie_word_embeddings=tie, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial norm scales, so a wrong mapping shows
                p.add_(0.3 * torch.randn_like(p))
    return model


def hf_logits(model, tokens=TOKENS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


@functools.partial(jax.jit, static_argnames=("cfg",))
def our_logits(params, tokens, cfg):
    return LlamaForCausalLM(cfg).apply({"params": params}, tokens).logits


CASES = [(False, True, False), (True, True, False), (True, False, True), (False, False, False)]


@pytest.mark.parametrize(("gqa", "scan", "tie"), CASES, ids=["mha-scan", "gqa-scan", "gqa-loop-tied", "mha-loop"])
def test_from_hf_logits_match(tmp_path, gqa, scan, tie):
    model = make_hf(gqa, tie)
    model.save_pretrained(tmp_path, max_shard_size="20KB")  # several shards + index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    params, cfg = hf_llama.read_hf_dir(tmp_path, scan_layers=scan)
    assert cfg.kv_heads == (2 if gqa else 4) and cfg.tie_embeddings == tie and cfg.rope_theta == 5e5
    assert ("scan_decoder" in params["transformer"]["h"]) == scan and ("lm_head" in params) == (not tie)
    ours = np.asarray(our_logits(params, TOKENS, cfg=cfg))
    np.testing.assert_allclose(ours, hf_logits(model), atol=1e-4, rtol=0)


def test_to_hf_from_pretrained_reproduces_logits_with_sidecar(tmp_path):
    cfg = preset(
        "debug", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
        initializer_range=0.1, rope_theta=5e7,
    )  # fmt: skip
    params = jax.tree.map(np.asarray, random_params(cfg, seed=1)["params"])
    rng = np.random.default_rng(0)
    params["transformer"]["ln_f"]["kernel"] = rng.normal(1.0, 0.3, 32).astype(np.float32)
    params["vte"] = {"embedding": rng.normal(size=(10, 32)).astype(np.float32)}
    params["vision_head"] = {"kernel": rng.normal(size=(32, 10)).astype(np.float32)}
    save_checkpoint(tmp_path / "ours", params, cfg)
    assert convert_checkpoint.main(
        ["to-hf", str(tmp_path / "ours"), str(tmp_path / "hf"), "--dtype", "float32", "--shard-size-mb", "0"]
    ) == 0  # fmt: skip
    hf_dir = tmp_path / "hf"
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    np.testing.assert_allclose(hf_logits(model), np.asarray(our_logits(params, TOKENS, cfg=cfg)), atol=1e-4, rtol=0)
    # extras travel in the sidecar and come back with from-hf
    back, cfg2 = hf_llama.read_hf_dir(hf_dir)
    np.testing.assert_array_equal(back["vte"]["embedding"], params["vte"]["embedding"])
    np.testing.assert_array_equal(back["vision_head"]["kernel"], params["vision_head"]["kernel"])
    assert cfg2 == cfg


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_ours_hf_is_bit_exact(tmp_path, dtype):
    model = make_hf(gqa=True, tie=False, seed=3).to(getattr(torch, dtype))
    model.save_pretrained(tmp_path / "hf", max_shard_size="30KB")
    args = ["from-hf", str(tmp_path / "hf"), str(tmp_path / "ours"), "--param-dtype", dtype]
    assert convert_checkpoint.main(args) == 0
    params, cfg = load_checkpoint(tmp_path / "ours")
    assert cfg.param_dtype == dtype and params["lm_head"]["kernel"].dtype.name == dtype
    assert convert_checkpoint.main(["to-hf", str(tmp_path / "ours"), str(tmp_path / "back"), "--dtype", dtype]) == 0
    a, b = hf_llama.SafetensorsDir(tmp_path / "hf"), hf_llama.SafetensorsDir(tmp_path / "back")
    assert sorted(a.weight_map) == sorted(b.weight_map) == sorted(hf_llama.iter_hf_names(cfg))
    for name in a.weight_map:
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs after HF -> ours -> HF"


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Hugging Face LlamaForCausalLM directory"):
        hf_llama.read_hf_dir(tmp_path)
    with pytest.raises(NotImplementedError, match="rope type 'llama3'"):
        hf_llama.config_from_hf({**hf_llama.config_to_hf(preset("debug")), "rope_parameters": {"rope_type": "llama3"}})
    with pytest.raises(ValueError, match="model_type"):
        hf_llama.config_from_hf({"model_type": "mistral"})
