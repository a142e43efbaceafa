"""`python scripts/benchmark.py lam [--preset lapa_demo] [--batch 16] [--steps 10]`: LAM train-step throughput.

Times the full jitted train step of the shared infrastructure (forward, NSVQ, replacement, backward, AdamW) on random
clips and prints clips/s and step time (median of `--steps` after one compile step), plus the parameter count.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np


def main(argv: list[str] | None, get_config: Callable[[str], ml_collections.ConfigDict]) -> int:
    """Runs the benchmark; `get_config` resolves presets (configs/lam.py, passed in by the script layer)."""
    from lam import config as lam_config
    from lam import train
    from lam.model import count_params
    from latent_pretraining.training import mesh as mesh_lib
    from latent_pretraining.training import optim, step
    from latent_pretraining.training import state as state_lib

    ap = argparse.ArgumentParser(prog="benchmark.py lam", description=__doc__)
    ap.add_argument("--preset", default="lapa_demo", help="configs/lam.py preset (fixed size; default lapa_demo)")
    ap.add_argument("--batch", type=int, default=16, help="global clips per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    args = ap.parse_args(argv)
    cfg = get_config(args.preset)
    cfg.data.batch_size = args.batch
    mesh = mesh_lib.make_mesh(dict(cfg.train.mesh))
    init_fn = train.make_init_fn(cfg)
    with jax.set_mesh(mesh):
        rng = jax.random.PRNGKey(0)
        abstract = jax.eval_shape(init_fn, rng)["params"]
        tx, schedule = optim.make_optimizer(cfg.train.optimizer, cfg.train.total_steps, abstract)
        st, shardings, _ = state_lib.create_train_state(init_fn, tx, mesh, rng)
        fn = step.jit_train_step(step.make_train_step(train.make_loss_fn(cfg), tx, schedule=schedule), shardings,
                                 mesh_lib.batch_sharding(mesh, 1))
        r, n = cfg.model.image_size, cfg.data.clip_len
        g = np.random.default_rng(0)
        batch = {"clip": g.integers(0, 256, (args.batch, lam_config.context_frames(cfg) + n, r, r, 3), dtype=np.uint8)}
        if cfg.model.flow_head and cfg.loss.flow_weight > 0:
            batch["flow"] = np.zeros((args.batch, n - 1, r, r, 2), np.float32)
        batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh, 1))
        st, m = fn(st, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            st, m = fn(st, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(json.dumps({"benchmark": "lam_train_step", "preset": args.preset, "batch": args.batch,
                      "image_size": r, "clip_len": n, "params": count_params(abstract),
                      "devices": jax.device_count(), "step_s_median": round(med, 4),
                      "clips_per_s": round(args.batch / med, 2)}, indent=2))
    return 0


def step_variants(args: Any, get_config: Callable[[str], ml_collections.ConfigDict]) -> tuple[list, str]:
    """`scripts/benchmark.py train-step --model lam`: the LAM trainer's step (forward, NSVQ, replacement, backward,
    the configured AdamW; state donated) for preset `--size` at `--batch` clips, on a one-device mesh, as one
    `step_table.Variant` (FLOPs from XLA's cost analysis of the compiled step: no hand formula exists for the LAM)."""
    from lam import config as lam_config
    from lam import train
    from latent_pretraining.training import mesh as mesh_lib
    from latent_pretraining.training import optim, step, step_table
    from latent_pretraining.training import state as state_lib

    cfg = get_config(args.size)
    cfg.data.batch_size = args.batch
    mesh = mesh_lib.make_mesh({"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, devices=jax.devices()[:1])
    init_fn = train.make_init_fn(cfg)
    with jax.set_mesh(mesh):
        rng = jax.random.PRNGKey(0)
        abstract = jax.eval_shape(init_fn, rng)["params"]
        tx, schedule = optim.make_optimizer(cfg.train.optimizer, cfg.train.total_steps, abstract)
        st, shardings, _ = state_lib.create_train_state(init_fn, tx, mesh, rng)
        sharding = mesh_lib.batch_sharding(mesh, 1)
        fn = step.jit_train_step(step.make_train_step(train.make_loss_fn(cfg), tx, schedule=schedule), shardings,
                                 sharding)
        r, n = cfg.model.image_size, cfg.data.clip_len
        g = np.random.default_rng(0)
        batch = {"clip": g.integers(0, 256, (args.batch, lam_config.context_frames(cfg) + n, r, r, 3), dtype=np.uint8)}
        if cfg.model.flow_head and cfg.loss.flow_weight > 0:
            batch["flow"] = np.zeros((args.batch, n - 1, r, r, 2), np.float32)
        batch = jax.device_put(batch, sharding)
        compiled = fn.lower(st, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float((cost or {}).get("flops", 0.0))
    mem = compiled.memory_analysis()
    box = [st]

    def run() -> None:
        box[0], m = compiled(box[0], batch)
        jax.block_until_ready((box[0].params, m))

    head = (f"LAM step: {args.size}, batch {args.batch} clips of {n} x {r}x{r}, XLA TFLOP/step={flops / 1e12:.4f} "
            "(executed FLOPs from XLA's cost analysis); no HF reference")
    temps = None if mem is None else int(mem.temp_size_in_bytes)
    return [step_table.Variant("ours", run, flops, temp_bytes=temps)], head
