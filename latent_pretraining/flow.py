"""Flow matching for continuous action chunks (ViPRA convention, DESIGN §5).

Convention: **noise at t=0, data at t=1**, with σ = ``sigma_min`` (0.001):

- interpolation   x_t = (1 − (1−σ)·t)·ε + t·a
- target velocity v*  = a − (1−σ)·ε            (= d x_t / dt; the model predicts it at the noisy-action slot)
- training time   t   = t_max·(1 − s), s ~ Beta(1.5, 1), t_max = 0.999 (density ∝ (1−t)^0.5: favours noise)
- loss            squared error averaged over action dims, then over all valid action positions of the batch
                  (a global token mean, unlike the per-sequence CE)
- sampling        from x ~ N(0, I) at t=0, N steps of forward Euler x ← x + (1/N)·v(x, k/N) (or Heun / RK2 on the
                  same grid); no clipping of the output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

TIME_DISTS = ("beta", "uniform")
INTEGRATORS = ("euler", "heun")

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Flow-matching hyper-parameters (frozen, hashable: usable as a static argument).

    Attributes:
      sigma_min: σ of the path; the data end is a·1 + σ·ε at t=1.
      time_dist: "beta" (t = t_max·(1 − Beta(beta_a, beta_b))) or "uniform" (stratified over the batch, in
        [0, t_max)).
      t_max: largest training time (keeps t away from the data end).
      steps: default number of integration steps at inference.
      integrator: default integrator, "euler" or "heun".
    """

    sigma_min: float = 0.001
    time_dist: str = "beta"
    beta_a: float = 1.5
    beta_b: float = 1.0
    t_max: float = 0.999
    steps: int = 10
    integrator: str = "euler"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {self.sigma_min}")
        if self.time_dist not in TIME_DISTS:
            raise ValueError(f"unknown time_dist {self.time_dist!r}: expected one of {', '.join(TIME_DISTS)}")
        if self.beta_a <= 0 or self.beta_b <= 0:
            raise ValueError(f"beta_a and beta_b must be > 0, got {self.beta_a}, {self.beta_b}")
        if not 0.0 < self.t_max <= 1.0:
            raise ValueError(f"t_max must be in (0, 1], got {self.t_max}")
        _check_integration(self.steps, self.integrator)


def _check_integration(steps: int, integrator: str) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}: expected one of {', '.join(INTEGRATORS)}")


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape per-example t f32[B] to broadcast against x [B, ...]."""
    t = jnp.asarray(t, jnp.float32)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def sample_time(rng: jax.Array, batch: int, cfg: FlowConfig) -> jax.Array:
    """Training times f32[batch] in [0, t_max].

    "beta": t = t_max·(1 − s), s ~ Beta(beta_a, beta_b) (E[t] = t_max·b/(a+b) = 0.3996 by default).
    "uniform": stratified, one t per stratum [i/B, (i+1)/B)·t_max, strata randomly permuted over the batch.
    """
    if cfg.time_dist == "beta":
        s = jax.random.beta(rng, cfg.beta_a, cfg.beta_b, (batch,), dtype=jnp.float32)
        return cfg.t_max * (1.0 - s)
    k_off, k_perm = jax.random.split(rng)
    u = jax.random.uniform(k_off, (batch,), jnp.float32)
    strata = (jnp.arange(batch, dtype=jnp.float32) + u) / batch
    return cfg.t_max * jax.random.permutation(k_perm, strata)


def interpolate(actions: jax.Array, noise: jax.Array, t: jax.Array, cfg: FlowConfig) -> jax.Array:
    """x_t = (1 − (1−σ)·t)·ε + t·a.

    Args:
      actions: a f32[B, H, A]; noise: ε f32[B, H, A]; t: f32[B] (one time per example, shared by its H slots).
    Returns:
      x_t f32[B, H, A].
    """
    tb = _bcast(t, actions)
    return (1.0 - (1.0 - cfg.sigma_min) * tb) * noise + tb * actions


def target_velocity(actions: jax.Array, noise: jax.Array, cfg: FlowConfig) -> jax.Array:
    """v* = a − (1−σ)·ε, f32[B, H, A] (independent of t: the path is a straight line)."""
    return actions - (1.0 - cfg.sigma_min) * noise


def flow_loss(pred_v: jax.Array, target_v: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Flow-matching MSE as a global mean over valid action positions.

    Args:
      pred_v, target_v: f32[B, H, A] (any float dtype; computed in float32).
      mask: bool[B, H], True at valid action slots; None means all valid.
    Returns:
      (loss f32[], num_valid f32[]): loss = Σ_valid mean_A (pred − target)² / max(num_valid, 1); 0 when none valid.
    """
    err = jnp.mean(jnp.square(pred_v.astype(jnp.float32) - target_v.astype(jnp.float32)), axis=-1)
    if mask is None:
        mask = jnp.ones(err.shape, bool)
    m = mask.astype(jnp.float32)
    num_valid = jnp.sum(m)
    loss = jnp.sum(jnp.where(mask, err, 0.0)) / jnp.maximum(num_valid, 1.0)
    return loss, num_valid


def training_example(rng: jax.Array, actions: jax.Array, cfg: FlowConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw ε ~ N(0, I) and t, and build one training example.

    Args:
      actions: a f32[B, H, A].
    Returns:
      x_t f32[B, H, A] (model input), t f32[B] (time conditioning), v_target f32[B, H, A].
    """
    actions = actions.astype(jnp.float32)
    k_noise, k_time = jax.random.split(rng)
    noise = jax.random.normal(k_noise, actions.shape, jnp.float32)
    t = sample_time(k_time, actions.shape[0], cfg)
    return interpolate(actions, noise, t, cfg), t, target_velocity(actions, noise, cfg)


def integrate(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    cfg: FlowConfig,
    steps: int | None = None,
    integrator: str | None = None,
) -> jax.Array:
    """Integrate dx/dt = v(x, t) from noise at t=0 to t=1 on the grid t_k = k/N (jit-able; N is static).

    Euler: x ← x + (1/N)·v(x, t_k). Heun (RK2): predictor x̃ = x + (1/N)·v(x, t_k), corrector
    x ← x + (1/(2N))·(v(x, t_k) + v(x̃, t_{k+1})); twice the function evaluations.

    Args:
      velocity_fn: (x f32[B, H, A], t f32[B]) -> v f32[B, H, A].
      noise: x at t=0, f32[B, H, A].
      steps, integrator: override ``cfg.steps`` / ``cfg.integrator``.
    Returns:
      actions f32[B, H, A] (dtype of ``noise``), unclipped.
    """
    steps = cfg.steps if steps is None else steps
    integrator = cfg.integrator if integrator is None else integrator
    _check_integration(steps, integrator)
    batch = noise.shape[0]
    dt = 1.0 / steps

    def vel(x: jax.Array, k: jax.Array) -> jax.Array:
        t = jnp.full((batch,), k.astype(jnp.float32) / steps, jnp.float32)
        return velocity_fn(x, t).astype(x.dtype)

    def euler(k: jax.Array, x: jax.Array) -> jax.Array:
        return x + dt * vel(x, k)

    def heun(k: jax.Array, x: jax.Array) -> jax.Array:
        v1 = vel(x, k)
        v2 = vel(x + dt * v1, k + 1)
        return x + (0.5 * dt) * (v1 + v2)

    body = euler if integrator == "euler" else heun
    return jax.lax.fori_loop(0, steps, body, noise)
