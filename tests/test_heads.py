"""The head table (latent_pretraining/model/heads.py): the table-driven objective reproduces the per-family code it
replaced, and a new head is one class + one table entry + one config value."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from heads_golden import CASES, WEIGHTS, case, compute, run

from latent_pretraining.model import heads
from latent_pretraining.model.video_llama import VideoLlama, VideoLlamaConfig, init_params

# What `python tests/heads_golden.py` printed on commit 74e64b1 (before the head table: per-family branches in
# video_llama.py / sequence.py / objective.py), on the 2-core CPU of the dev machine (jax CPU, float32).
GOLDEN = {
    "lapa": {"acc_latent": 0.0833333358168602, "acc_text": 0.0, "action_rows": 0.0, "grad_norm": 2.2322022914886475,
             "loss": 3.0759472846984863, "loss_latent": 2.1604177951812744, "loss_text": 3.6621174812316895,
             "n_latent": 12.0, "n_text": 16.0},
    "lapa_chunked": {"acc_latent": 0.0833333358168602, "acc_text": 0.0, "action_rows": 0.0,
                     "grad_norm": 2.208859443664551, "loss": 3.0904691219329834, "loss_latent": 2.1604177951812744,
                     "loss_text": 3.720205545425415, "n_latent": 12.0, "n_text": 16.0},
    "vipra": {"acc_latent": 0.13333334028720856, "acc_text": 0.0, "acc_vision": 0.06666667014360428,
              "action_rows": 0.25, "grad_norm": 67.31251525878906, "loss": 5.021874904632568,
              "loss_flow": 0.2201230227947235, "loss_latent": 2.21150803565979, "loss_text": 3.6876437664031982,
              "loss_vision": 2.8964197635650635, "n_flow": 1.0, "n_latent": 15.0, "n_text": 15.0, "n_vision": 15.0},
    "vipra_chunked": {"acc_latent": 0.13333334028720856, "acc_text": 0.0, "acc_vision": 0.06666667014360428,
                      "action_rows": 0.25, "grad_norm": 67.31251525878906, "loss": 5.021875381469727,
                      "loss_flow": 0.2201230227947235, "loss_latent": 2.211508274078369,
                      "loss_text": 3.6876437664031982, "loss_vision": 2.8964202404022217, "n_flow": 1.0,
                      "n_latent": 15.0, "n_text": 15.0, "n_vision": 15.0},
    "lapa_bins": {"acc_action_bins": 0.095238097012043, "acc_text": 0.4166666567325592, "action_rows": 1.0,
                  "grad_norm": 1.1253191232681274, "loss": 2.7454519271850586, "loss_action_bins": 2.4625051021575928,
                  "loss_text": 3.594292640686035, "n_action_bins": 21.0, "n_text": 12.0},
}


@pytest.mark.parametrize("name", list(CASES))
def test_table_driven_objective_matches_the_per_family_code(name: str) -> None:
    """Same metric keys and (to float32 rounding of a recompiled program) the same values as before the table."""
    got = compute(name)
    assert set(got) == set(GOLDEN[name])
    for key, want in GOLDEN[name].items():
        np.testing.assert_allclose(got[key], want, rtol=2e-6, atol=1e-7, err_msg=f"{name}: {key}")


# ------------------------------------------------------------------------------------------- a toy extra head
@dataclasses.dataclass(frozen=True)
class ToyConfig(VideoLlamaConfig):
    """The config value of the toy head: its output width (0 = absent)."""

    action_value_dim: int = 0


class ActionValueHead(heads.Head):
    """A second continuous head: regresses the clean action chunk directly at the action slots (MSE)."""

    name, family, size_field, module = "action_value", heads.ACTION, "action_value_dim", "value_head"

    def positions(self, spec):
        return np.asarray(spec.action_positions, np.int32)

    def training_inputs(self, rng, batch, spec, flow_cfg):
        return {}, {"clean_actions": batch["actions"].astype(jnp.float32)}

    def loss(self, inputs):
        pos = self.positions(inputs.spec)
        err = jnp.mean(jnp.square(inputs.out.logits[self.name] - inputs.extra["clean_actions"]), axis=-1)
        w = heads.slot_weights(inputs.seq, pos, self.family).astype(jnp.float32)
        loss = jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, {"loss_action_value": loss}


@pytest.fixture
def toy_head(monkeypatch):
    """The one table entry (undone after the test, as deleting the line would)."""
    monkeypatch.setattr(heads, "HEADS", dict(heads.HEADS))
    yield heads.register(ActionValueHead())


def test_a_new_head_is_one_class_one_entry_one_config_value(toy_head) -> None:
    model, spec, _, data = case("vipra")
    base_params = init_params(model.config, jax.random.key(3))["params"]
    before, _ = run(model, spec, base_params, data)

    cfg = ToyConfig(**{f.name: getattr(model.config, f.name) for f in dataclasses.fields(model.config)},
                    action_value_dim=3)
    params = init_params(cfg, jax.random.key(3))["params"]
    assert params["value_head"]["kernel"].shape == (16, 3) and "velocity_head" in params
    got, grads = run(VideoLlama(cfg), spec, params, data, {**WEIGHTS, "action_value": 1.0})
    assert got["loss_action_value"] > 0
    assert got["loss"] == pytest.approx(before["loss"] + got["loss_action_value"], rel=1e-5)
    assert float(jnp.abs(grads["value_head"]["kernel"]).sum()) > 0
    # the other heads see the same numbers (the new parameters are siblings, every other init is unchanged)
    for key in ("loss_text", "loss_vision", "loss_latent", "loss_flow"):
        assert got[key] == pytest.approx(before[key], rel=1e-6, abs=1e-7), key


def test_removing_the_toy_head_restores_the_original_loss(toy_head) -> None:
    model, spec, params, data = case("vipra")
    with_entry, _ = run(model, spec, params, data)  # in the table but size 0 in the config: absent
    del heads.HEADS[toy_head.name]
    without, _ = run(model, spec, params, data)
    assert with_entry == without
    assert without["loss"] == pytest.approx(GOLDEN["vipra"]["loss"], rel=2e-6)


def test_table_order_parameter_names_and_lookup() -> None:
    assert list(heads.HEADS) == ["text", "vision", "latent", "action_bins", "flow"]
    assert [h.module for h in heads.HEADS.values()] == ["lm_head", "vision_head", "latent_actions_head",
                                                         "action_head", "velocity_head"]
    assert dict(heads.TOKEN_FAMILIES) == {"text": heads.TEXT, "vision": heads.VISION, "latent": heads.LATENT,
                                          "action_bins": heads.ACTION_BIN}
    with pytest.raises(ValueError, match="unknown head 'latnet'; did you mean 'latent'"):
        heads.get("latnet")
    with pytest.raises(ValueError, match="already in the table"):
        heads.register(heads.FlowHead())


def test_action_head_picks_the_suffix_family() -> None:
    for name, want in (("vipra", "flow"), ("lapa_bins", "action_bins"), ("lapa", None)):
        model, spec, _, _ = case(name)
        head = heads.action_head(spec, model.config)
        assert (head.name if head else None) == want, name


def test_samplers_take_the_family_from_the_head() -> None:
    from policy import sampler

    with pytest.raises(ValueError, match="head 'latent' predicts family 2, not 1"):
        sampler.greedy_decode(None, None, None, None, 1, 1, heads.VISION, "latent")
    with pytest.raises(ValueError, match="'flow' is not a discrete head"):
        sampler.greedy_decode(None, None, None, None, 1, 1, None, "flow")
    with pytest.raises(ValueError, match=r"\.action_value_dim=-1 must be >= 0"):
        ToyConfig(llama=case("lapa")[0].config.llama, action_value_dim=-1)


def test_a_layout_family_without_its_head_fails_clearly() -> None:
    model, spec, _, data = case("lapa")
    cfg = model.config.replace(latent_vocab_size=0)
    with pytest.raises(ValueError, match="scores latent tokens but the model has no 'latent' head"):
        run(VideoLlama(cfg), spec, init_params(cfg, jax.random.key(0))["params"], data)
