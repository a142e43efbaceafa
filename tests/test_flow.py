"""Flow matching (latent_pretraining.flow): path, target, time distribution, masked loss, integrators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latent_pretraining import flow

CFG = flow.FlowConfig()
SIG = CFG.sigma_min


def _data(seed: int = 0, shape: tuple[int, ...] = (3, 4, 2)) -> tuple[jax.Array, jax.Array]:
    ka, ke = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(ka, shape), jax.random.normal(ke, shape)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="time_dist"):
        flow.FlowConfig(time_dist="logit_normal")
    with pytest.raises(ValueError, match="integrator"):
        flow.FlowConfig(integrator="rk4")
    with pytest.raises(ValueError, match="steps"):
        flow.FlowConfig(steps=0)
    with pytest.raises(ValueError, match="sigma_min"):
        flow.FlowConfig(sigma_min=1.0)
    with pytest.raises(ValueError, match="integrator"):
        flow.integrate(lambda x, t: x, jnp.zeros((1, 2, 2)), CFG, integrator="midpoint")
    hash(CFG)  # usable as a static argument


def test_interpolation_endpoints_and_formula() -> None:
    a, eps = _data()
    t0, t1 = jnp.zeros(3), jnp.ones(3)
    np.testing.assert_allclose(flow.interpolate(a, eps, t0, CFG), eps, atol=1e-7)
    np.testing.assert_allclose(flow.interpolate(a, eps, t1, CFG), a + SIG * eps, atol=1e-6)
    t = jnp.array([0.1, 0.5, 0.9])
    want = (1 - (1 - SIG) * t[:, None, None]) * eps + t[:, None, None] * a
    np.testing.assert_allclose(flow.interpolate(a, eps, t, CFG), want, atol=1e-6)


def test_time_derivative_is_target_velocity() -> None:
    a, eps = _data(1)
    t, h = jnp.array([0.2, 0.5, 0.7]), 1e-2  # the path is linear in t: finite differences are exact up to rounding
    fd = (flow.interpolate(a, eps, t + h, CFG) - flow.interpolate(a, eps, t - h, CFG)) / (2 * h)
    np.testing.assert_allclose(fd, flow.target_velocity(a, eps, CFG), atol=1e-4)


def test_beta_time_distribution() -> None:
    t = np.asarray(flow.sample_time(jax.random.PRNGKey(0), 20000, CFG))
    assert t.shape == (20000,) and t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= CFG.t_max
    # s ~ Beta(1.5, 1): E[s] = 0.6, so E[t] = 0.999 * 0.4; std(t) ~ 0.26, standard error ~ 0.002
    assert abs(t.mean() - 0.999 * 0.4) < 0.01
    assert (t < 0.5).mean() > 0.55  # density ∝ (1 - t)^0.5 favours the noisy end


def test_uniform_time_is_stratified() -> None:
    cfg = flow.FlowConfig(time_dist="uniform")
    b = 16
    t = np.sort(np.asarray(flow.sample_time(jax.random.PRNGKey(3), b, cfg))) / cfg.t_max
    lo, hi = np.arange(b) / b, (np.arange(b) + 1) / b
    assert np.all(t >= lo) and np.all(t <= hi)


def test_training_example() -> None:
    a, _ = _data(2)
    x_t, t, v = jax.jit(flow.training_example, static_argnums=2)(jax.random.PRNGKey(5), a, CFG)
    assert x_t.shape == a.shape and v.shape == a.shape and t.shape == (3,)
    eps = (a - v) / (1 - SIG)  # recover the drawn noise from the target, then check the path
    np.testing.assert_allclose(x_t, flow.interpolate(a, eps, t, CFG), atol=1e-5)


def test_loss_masking() -> None:
    pred, target = _data(4)
    mask = jnp.array([[True, True, False, False], [True, False, False, False], [False] * 4])
    loss, n = flow.flow_loss(pred, target, mask)
    err = np.mean((np.asarray(pred) - np.asarray(target)) ** 2, axis=-1)
    assert float(n) == 3.0
    np.testing.assert_allclose(loss, err[np.asarray(mask)].mean(), rtol=1e-6)
    # garbage at masked positions does not change the loss
    junk = jnp.where(mask[..., None], pred, 1e6)
    np.testing.assert_allclose(flow.flow_loss(junk, target, mask)[0], loss, rtol=1e-6)
    # nothing valid: 0, not NaN, and finite gradients
    none = jnp.zeros_like(mask)
    loss0, n0 = flow.flow_loss(pred, target, none)
    assert float(loss0) == 0.0 and float(n0) == 0.0
    g = jax.grad(lambda p: flow.flow_loss(p, target, none)[0])(pred)
    assert np.all(np.asarray(g) == 0.0)
    # no mask = all valid
    np.testing.assert_allclose(flow.flow_loss(pred, target)[0], err.mean(), rtol=1e-6)


def test_integrators_single_point() -> None:
    """The exact conditional field of one data point a has straight trajectories: both integrators recover it."""
    a, eps = _data(6)
    c = 1 - SIG

    def v(x: jax.Array, t: jax.Array) -> jax.Array:
        return (a - c * x) / (1 - c * t[:, None, None])

    for integrator in flow.INTEGRATORS:
        out = jax.jit(lambda e, i=integrator: flow.integrate(v, e, CFG, integrator=i))(eps)
        np.testing.assert_allclose(out, a + SIG * eps, atol=1e-4)  # = x_1, within ~1e-3 of a
        assert float(jnp.max(jnp.abs(out - a))) < 1e-2


def test_heun_beats_euler_on_curved_flow() -> None:
    """Gaussian data N(μ, s²): the marginal field is exact in closed form and its trajectories curve.

    x_t = tμ + sd(t)·z with sd(t)² = (1 − ct)² + t²s², so v(x, t) = μ + sd'(t)/sd(t)·(x − tμ) and x_1 = μ + sd(1)·ε.
    """
    mu, s, c = 2.0, 0.3, 1 - SIG
    eps = jax.random.normal(jax.random.PRNGKey(7), (4, 5, 3))

    def v(x: jax.Array, t: jax.Array) -> jax.Array:
        t = t[:, None, None]
        var = (1 - c * t) ** 2 + (t * s) ** 2
        dvar = -2 * c * (1 - c * t) + 2 * t * s**2
        return mu + 0.5 * dvar / var * (x - t * mu)

    exact = mu + np.sqrt(SIG**2 + s**2) * np.asarray(eps)
    err = {
        i: float(np.abs(np.asarray(flow.integrate(v, eps, CFG, integrator=i)) - exact).max()) for i in flow.INTEGRATORS
    }
    assert err["euler"] < 0.3, err  # ~0.10 with 10 steps
    assert err["heun"] < 0.2 * err["euler"], err  # ~0.006
    err_fine = float(np.abs(np.asarray(flow.integrate(v, eps, CFG, steps=40)) - exact).max())
    assert err_fine < err["euler"], (err_fine, err)
