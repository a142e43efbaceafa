"""Optimizer factory and train step: schedules, gradient accumulation, frozen params, weight-decay mask, EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_utils import Data, config, init_fn, loss_fn, mse_loss

from latent_pretraining.training import mesh, optim, sharding, state, step


def _setup(**opt):
    cfg = config(**opt)
    params = sharding.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0))["params"])
    tx, schedule = optim.make_optimizer(cfg.optimizer, cfg.total_steps, params)
    m = mesh.make_mesh({"fsdp": -1})
    st, shardings, _ = state.create_train_state(init_fn, tx, m, jax.random.PRNGKey(0), ema=cfg.optimizer.ema_decay > 0)
    return cfg, tx, schedule, st, shardings, m


def _copy(tree):
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


@pytest.mark.parametrize(
    "schedule, expect",
    [
        ("constant", {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 100: 1.0}),
        ("warmup_linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1}),
        ("warmup_cosine", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1}),
    ],
)
def test_schedules(schedule: str, expect: dict[int, float]) -> None:
    c = optim.default_config()
    c.update(lr=1.0, init_lr=0.0, end_lr=0.1, warmup_steps=10, schedule=schedule)
    fn = optim.make_schedule(c, total_steps=100)
    for s, v in expect.items():
        assert float(fn(s)) == pytest.approx(v, abs=1e-6), (schedule, s)
    c.schedule = "cosine"
    with pytest.raises(ValueError, match="not one of"):
        optim.make_schedule(c, 100)


def test_defaults_follow_the_lineage() -> None:
    c = optim.default_config()
    assert (c.b1, c.b2, c.clip_grad_norm) == (0.9, 0.95, 1.0)


def test_grad_accumulation_equals_big_batch() -> None:
    _cfg, tx, schedule, st0, _shardings, _m = _setup()
    batches = [next(Data(batch=16)) for _ in range(1)] + [next(Data(seed=1, batch=16))]
    results = []
    for n in (1, 4):
        fn = jax.jit(step.make_train_step(mse_loss, tx, schedule=schedule, grad_accum_steps=n))
        st = jax.tree.map(jnp.array, st0)
        for b in batches:
            st, metrics = fn(st, b)
        results.append((_copy(st.params), _copy(st.opt_state), jax.device_get(metrics)))
    (p1, o1, m1), (p4, o4, m4) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), p1, p4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), o1, o4)
    np.testing.assert_allclose(m1["mse"], m4["mse"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
        jax.jit(step.make_train_step(loss_fn, tx, grad_accum_steps=3))(st0, batches[0])


def test_frozen_params_bitwise_unchanged_and_weight_decay_mask() -> None:
    cfg, tx, schedule, st, _shardings, _m = _setup(frozen=("Dense_0/kernel",), weight_decay=0.5, warmup_steps=0,
                                                 schedule="constant", lr=0.1)
    trainable = optim.trainable_mask(st.params, cfg.optimizer)
    assert optim.weight_decay_mask(st.params, cfg.optimizer) == {
        "Dense_0": {"kernel": False, "bias": False}, "Dense_1": {"kernel": True, "bias": False},
        "LayerNorm_0": {"scale": False, "bias": False},
    }
    # -0.0 must survive in a frozen leaf (adding a zero update would turn it into +0.0).
    st = st.replace(params={**st.params, "Dense_0": {**st.params["Dense_0"],
                                                      "kernel": st.params["Dense_0"]["kernel"].at[0, 0].set(-0.0)}})
    before = _copy(st.params)

    # Zero gradients: Adam's update is exactly 0, so only weight decay can move a parameter.
    zero_loss = lambda p, b, r: (0.0 * sum(jnp.sum(x) for x in jax.tree.leaves(p)), {})
    fn = jax.jit(step.make_train_step(zero_loss, tx, schedule=schedule, trainable=trainable))
    for _ in range(3):
        st, _ = fn(st, next(Data()))
    after = _copy(st.params)
    k0 = after["Dense_0"]["kernel"]
    assert k0.tobytes() == before["Dense_0"]["kernel"].tobytes() and np.signbit(k0[0, 0])  # frozen: bitwise
    for name in ("bias",):
        np.testing.assert_array_equal(after["Dense_1"][name], before["Dense_1"][name])  # excluded from decay
    np.testing.assert_array_equal(after["LayerNorm_0"]["scale"], before["LayerNorm_0"]["scale"])
    np.testing.assert_allclose(after["Dense_1"]["kernel"], before["Dense_1"]["kernel"] * (1 - 0.1 * 0.5) ** 3,
                               rtol=1e-6)

    # Real gradients: frozen stays bitwise, everything else moves.
    fn = jax.jit(step.make_train_step(loss_fn, tx, schedule=schedule, trainable=trainable))
    for i in range(3):
        st, _metrics = fn(st, next(Data(seed=i)))
    after = _copy(st.params)
    assert after["Dense_0"]["kernel"].tobytes() == before["Dense_0"]["kernel"].tobytes()
    assert not np.array_equal(after["Dense_0"]["bias"], before["Dense_0"]["bias"])
    with pytest.raises(ValueError, match="freezes every parameter"):
        c = cfg.optimizer.copy_and_resolve_references()
        c.frozen = (".*",)
        optim.make_optimizer(c, 10, st.params)


def test_ema_and_metrics() -> None:
    _cfg, tx, schedule, st, shardings, m = _setup(ema_decay=0.5)
    fn = step.jit_train_step(step.make_train_step(loss_fn, tx, schedule=schedule, ema_decay=0.5), shardings,
                             mesh.batch_sharding(m, 1))
    p0 = _copy(st.params)
    st, metrics = fn(st, next(Data()))
    expected = {"loss", "mse", "noise_term", "grad_norm", "param_norm", "update_norm", "lr", "nonfinite"}
    assert set(metrics) == expected
    p1 = _copy(st.params)
    jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, 0.5 * a + 0.5 * b, rtol=1e-6),
                 _copy(st.ema_params), p0, p1)
    assert int(st.step) == 1 and float(metrics["lr"]) == 0.0  # warmup starts at init_lr
