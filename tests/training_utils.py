"""Shared pieces of the training-infrastructure tests: a tiny Flax MLP, its loss, a deterministic data iterator."""

from __future__ import annotations

import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from latent_pretraining.training import loop

IN_DIM, HIDDEN, GLOBAL_BATCH = 8, 32, 16


class TinyMLP(nn.Module):
    """Dense(logically partitioned) -> LayerNorm -> relu -> Dense(1)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        x = nn.Dense(HIDDEN, kernel_init=init)(x)
        x = jax.nn.relu(nn.LayerNorm()(x))
        return nn.Dense(1)(x)[..., 0]


MODEL = TinyMLP()


def params_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest array-data file of a checkpoint step's params item (OCDBT data files live under .../d/)."""
    return max((p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def flip(path: pathlib.Path, n: int = 64) -> None:
    """Flips `n` bytes in the middle of a file (silent corruption: same size, same name)."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + n] = bytes(b ^ 0xFF for b in raw[mid:mid + n])
    path.write_bytes(bytes(raw))


def init_fn(rng: jax.Array) -> Any:
    return MODEL.init(rng, jnp.zeros((1, IN_DIM), jnp.float32))


def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSE plus a tiny rng-dependent term (so the per-step fold_in(rng, step) matters for exact resume)."""
    pred = MODEL.apply({"params": params}, batch["x"])
    mse = jnp.mean(jnp.square(pred - batch["y"]))
    noise = 1e-3 * jnp.mean(pred * jax.random.normal(rng, pred.shape))
    return mse + noise, {"mse": mse, "noise_term": noise}


class Data:
    """Batch i is a pure function of (seed, i); this process gets rows [pid*b, (pid+1)*b) of the global batch."""

    def __init__(self, seed: int = 0, batch: int = GLOBAL_BATCH, process_index: int = 0, process_count: int = 1,
                 nan_at: int = -1):
        self.seed, self.batch, self.index, self.nan_at = seed, batch, 0, nan_at
        self.rows = slice(process_index * batch // process_count, (process_index + 1) * batch // process_count)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        x = rng.normal(size=(self.batch, IN_DIM)).astype(np.float32)
        y = (np.sin(x.sum(-1)) + 0.1 * rng.normal(size=self.batch)).astype(np.float32)
        if self.index == self.nan_at:
            x[0, 0] = np.nan
        self.index += 1
        return {"x": x[self.rows], "y": y[self.rows]}

    def get_state(self) -> dict[str, int]:
        return {"index": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


def config(total_steps: int = 20, every: int = 5, **opt: Any) -> ml_collections.ConfigDict:
    c = loop.default_config()
    c.total_steps = total_steps
    c.checkpoint.every = every
    c.log.every = 5
    c.log.tensorboard = False
    c.log.progress = "off"
    c.optimizer.lr = 1e-2
    c.optimizer.warmup_steps = 2
    c.optimizer.weight_decay = 1e-3
    c.optimizer.ema_decay = 0.9
    for k, v in opt.items():
        c.optimizer[k] = v
    return c


def mse_loss(params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Deterministic loss (no rng use): per-example mean, so micro-batch means average to the full-batch mean."""
    del rng
    mse = jnp.mean(jnp.square(MODEL.apply({"params": params}, batch["x"]) - batch["y"]))
    return mse, {"mse": mse}
