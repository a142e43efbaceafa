"""Config contracts: every VideoLLaMA / policy preset exposes every LLaMA field, and overrides reach the model."""

import re

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


# --- one lookup for presets and fields ------------------------------------------------------------------------------

def _modules():
    from configs import lam, mixtures, vqgan

    return [(lapa.get_config, "demoo", "'demo'"), (vipra.get_config, "7c", None), (policy.get_config, "vipra_dem",
            "'vipra_demo'"), (lam.get_config, "lapa_dmo", "'lapa_demo'"), (vqgan.get_config, "tny", "'tiny'"),
            (mixtures.get_mixture, "oxe_magic_soop", "'oxe_magic_soup'")]


def test_unknown_presets_fail_in_one_line_with_a_suggestion():
    from core.errors import UserError
    from core.lookup import UnknownName

    for get, name, hint in _modules():
        with pytest.raises(UnknownName) as err:
            get(name)
        msg = str(err.value)
        assert msg.startswith("unknown ") and f"{name!r}" in msg and "(known: " in msg and "\n" not in msg, msg
        if hint:
            assert f"did you mean {hint}?" in msg, msg
        # the old exception types keep working
        assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
        assert isinstance(err.value, UserError)


def test_unknown_field_suggests_the_full_path():
    from core.lookup import UnknownName, field, set_field

    c = vipra.get_config("debug")
    set_field(c, "train.optimizer.grad_accum_steps", 2)
    assert c.train.optimizer.grad_accum_steps == 2
    with pytest.raises(UnknownName, match=r"unknown config field 'train.optimizer.grad_acum'; did you mean "
                                          r"'train.optimizer.grad_accum_steps'\?"):
        set_field(c, "train.optimizer.grad_acum", 2)
    with pytest.raises(KeyError, match=r"did you mean 'model\.llama'"):
        field(c, "model.lama.num_layers")


@pytest.mark.parametrize("module", [lapa, vipra, policy], ids=lambda m: m.__name__)
def test_presets_change_values_not_fields(module):
    """Every preset has the same field tree (the base config's): a run never reads a field some preset lacks."""
    trees = {p: sorted(_paths(module.get_config(p).to_dict())) for p in module.PRESETS}
    first = next(iter(trees.values()))
    assert all(t == first for t in trees.values()), {p: set(t) ^ set(first) for p, t in trees.items()}


def _paths(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _paths(v, prefix + k + ".")
        else:
            yield prefix + k


# --- typed LAM configuration ----------------------------------------------------------------------------------------

def test_lam_presets_share_base_fields_and_tables_cannot_add_any(monkeypatch):
    from configs import lam
    from core.lookup import UnknownName

    base = sorted(_paths(lam.base().to_dict()))
    for p in lam.PRESETS:
        assert sorted(_paths(lam.get_config(p).to_dict())) == base, p
    monkeypatch.setitem(lam.SMALL_FAMILY, "lapa", {**lam.SMALL_FAMILY["lapa"], "model.encoder.motion_stems": 8})
    with pytest.raises(UnknownName, match=r"did you mean 'model\.encoder\.motion_stem'"):
        lam.get_config("lapa_demo")


def test_cluttered_lam_presets_are_the_demo_presets_with_the_measured_overrides():
    """lapa_cluttered / vipra_cluttered are exactly what docs/lam.md measured on shaky, cluttered video:
    `<family>_demo --config.model.stabilize=True --config.model.patch_size=4 --config.model.code_pool=max`."""
    from configs import lam

    for family in lam.FAMILIES:
        want = lam.get_config(f"{family}_demo").to_dict()
        want["model"].update(stabilize=True, patch_size=4, code_pool="max")
        got = lam.get_config(f"{family}_cluttered").to_dict()
        assert got.pop("preset") == f"{family}_cluttered" and want.pop("preset") == f"{family}_demo"
        assert got == want, family


@pytest.mark.parametrize(("field", "typo", "allowed"), [
    ("model.encoder.layout", "factorised", "factorized, interleaved"),
    ("model.decoder.kind", "crossattention", "cross_attention, film"),
    ("model.code_pool", "means", "grid, max, mean"),
    ("loss.pixel", "l2", "l1, mse"),
    ("loss.flow_target", "groundtruth", "block_match, farneback, ground_truth"),
    ("quantizer.source", "batches", "batch, codes"),
    ("data.source", "stream", "memory, pipeline"),
])
def test_lam_kind_typo_fails_with_the_allowed_values(field, typo, allowed):
    import jax

    from configs import lam
    from core.lookup import set_field
    from lam import config as lam_config
    from lam import train as lam_train

    c = lam.get_config("lapa_tiny")
    set_field(c, field, typo)
    expected = re.escape(f"unknown LAM config {field} '{typo}'") + ".*" + re.escape(f"(allowed: {allowed})")
    with pytest.raises(ValueError, match=expected):
        lam_config.check(c)
    if field.startswith("model."):  # at model construction too (a --config.model... flag typo)
        with pytest.raises(ValueError, match=re.escape(f"(allowed: {allowed})")):
            jax.eval_shape(lam_train.make_init_fn(c), jax.random.PRNGKey(0))
    elif field.startswith("loss."):
        with pytest.raises(ValueError, match="allowed: "):
            lam_train.make_loss_fn(c)


def test_saved_lam_configs_load_old_and_new():
    """config.json of today's runs loads unchanged; older runs get the values that reproduce them."""
    import json

    from configs import lam
    from lam import config as lam_config

    for p in ("lapa_demo", "vipra"):
        saved = json.loads(lam.get_config(p).to_json_best_effort())
        assert json.loads(lam_config.from_saved(saved).to_json_best_effort()) == saved
    old = json.loads(lam.get_config("lapa").to_json_best_effort())
    for key in ("code_pool", "slot_codebooks", "quant_norm", "quant_warmup_steps"):
        del old["model"][key]
    del old["model"]["encoder"]["motion_stem"], old["model"]["encoder"]["peg"], old["model"]["decoder"]["peg"]
    del old["loss"]["flow"], old["loss"]["flow_target"], old["loss"]["flow_moving_power"]
    old["eval"]["position_bins"], old["model"]["dino"]["lr_mult"], old["loss"]["perceptual"] = 8, 0.1, ""
    old["model"]["code_global_mix"] = 0.0
    loaded = lam_config.from_saved(old)
    assert json.loads(loaded.to_json_best_effort()) == json.loads(lam.get_config("lapa").to_json_best_effort())
    old["model"]["decoder"]["kind"] = "film"
    assert lam_config.from_saved(old).model.decoder.peg is True  # FiLM decoders had PEG before the switch existed
    old["model"]["code_global_mix"] = 3.0
    with pytest.raises(ValueError, match="code_global_mix is no longer supported"):
        lam_config.from_saved(old)
