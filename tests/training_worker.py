"""Subprocess side of the training tests (exact resume after SIGKILL / SIGTERM, 2-process run on localhost).

Usage: python tests/training_worker.py WORKDIR OUT_PREFIX [--resume] [--pause_at N] [--sigterm_at N] [--total N]
       [--coordinator HOST:PORT --num_processes P --process_id I]
Set XLA_FLAGS (device count) in the environment before starting it.
"""

import argparse
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from training_utils import Data, config, init_fn, loss_fn

from latent_pretraining.training import checkpoint, distributed, loop, mesh, optim, sharding, state


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--total", type=int, default=20)
    p.add_argument("--pause_at", type=int, default=-1)  # print PAUSED and sleep (the test sends SIGKILL)
    p.add_argument("--sigterm_at", type=int, default=-1)  # send ourselves SIGTERM after this step
    p.add_argument("--coordinator", default="")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    a = p.parse_args()

    cfg = config(total_steps=a.total, every=5)
    if a.coordinator:
        cfg.distributed.coordinator_address = a.coordinator
        cfg.distributed.num_processes = a.num_processes
        cfg.distributed.process_id = a.process_id
        cfg.distributed.initialization_timeout = 60
    distributed.initialize(cfg.distributed)

    def hook(step, st, metrics, logger):
        if jax.process_index() == 0:
            with open(a.out + ".losses", "a") as f:
                f.write(f"{step} {float(metrics['loss']).hex()}\n")
        if step == a.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step == a.pause_at:
            print(f"PAUSED {step}", flush=True)
            time.sleep(600)

    data = Data(process_index=jax.process_index(), process_count=jax.process_count())
    result = loop.run(config=cfg, workdir=a.workdir, init_fn=init_fn, loss_fn=loss_fn, data=data, resume=a.resume,
                      hooks=[hook], items_per_step=16)
    if a.coordinator:  # restore the final checkpoint into the same shardings and compare shard by shard
        rng = jax.random.PRNGKey(cfg.seed)
        params = sharding.unbox(jax.eval_shape(init_fn, rng)["params"])
        tx, _ = optim.make_optimizer(cfg.optimizer, cfg.total_steps, params)
        abstract, _ = state.abstract_train_state(init_fn, tx, mesh.make_mesh(dict(cfg.mesh)), rng, ema=True)
        ck = checkpoint.Checkpointer(os.path.join(a.workdir, "checkpoints"))
        restored, data_state = ck.restore(abstract)
        ck.close()
        same = all(np.array_equal(x.addressable_data(0), y.addressable_data(0))
                   for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(result.state), strict=True))
        print(f"RESTORE {'OK' if same and data_state == data.get_state() else 'MISMATCH'} step={restored.step}",
              flush=True)
    params = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
              for k, v in state.flatten(result.state.params).items()}
    if jax.process_index() == 0:
        np.savez(a.out + ".npz", **params)
    print(f"DONE step={result.step} interrupted={result.interrupted}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
