"""Multi-process VideoLLaMA training on localhost (2 processes x 4 CPU devices, one 8-device mesh): the step with the
frozen VQGAN + LAM inside, and the held-out evaluation, which every process runs on the globally sharded params.

The fast tests cover the same code in one process: `evaluate` on params sharded over the 8 test devices equals it on
host copies, and the frozen LAM the trainer carries is its encoder only, with the same labels."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import optax
import pytest
from shared_assets import tiny_labeler
from test_training_resume import _env, _finish, _free_port
from vla_fixtures import write_tokenizers

from configs import vipra
from lam import api as lam_api
from latent_pretraining import train
from latent_pretraining.training import mesh as mesh_lib
from latent_pretraining.training import state as state_lib

HERE = pathlib.Path(__file__).resolve().parent


def _config(tmp: pathlib.Path, data: str):
    tok, vq = write_tokenizers(tmp)
    c = vipra.get_config("debug")
    c.text.tokenizer, c.vision.tokenizer, c.data.root = tok, vq, data
    c.data.shuffle_buffer, c.data.eval_batches = 16, 1
    return c


def test_the_trainer_carries_only_the_lam_encoder(tmp_path: pathlib.Path, demo_data: str) -> None:
    fn, full, info = tiny_labeler("vipra_tiny")
    setup = train.build(_config(tmp_path, demo_data), (fn, full, info))
    kept = setup.frozen_weights["lam"]["params"]
    assert "quantizer" in kept and not any(k.startswith(("dec", "to_pixels", "to_flow", "cond_")) for k in kept)
    assert set(kept) < set(full["params"])
    clip = np.random.default_rng(0).integers(0, 256, (2, info["clip_len"], 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(jax.jit(fn)(setup.frozen_weights["lam"], clip), jax.jit(fn)(full, clip))
    # an already-pruned tree stays as it is
    assert jax.tree.structure(lam_api.encoder_only((fn, setup.frozen_weights["lam"], info), 64)[1]) == \
        jax.tree.structure(setup.frozen_weights["lam"])


@pytest.mark.slow  # two evaluation compiles: ~100 s on the busy shared CPU (test_vla_train's end-to-end run also
# evaluates on params sharded over the 8 test devices, fast)
def test_evaluate_on_sharded_params_equals_host_params(tmp_path: pathlib.Path, demo_data: str) -> None:
    setup = train.build(_config(tmp_path, demo_data), tiny_labeler("vipra_tiny"))
    mesh = mesh_lib.make_mesh(dict(setup.config.train.mesh))  # fsdp over the 8 test devices, as training
    init_fn = train.make_init_fn(setup)
    with jax.set_mesh(mesh):
        st, _, _ = state_lib.create_train_state(init_fn, optax.sgd(0.0), mesh, jax.random.PRNGKey(0),
                                                loaded_model_state={"frozen": setup.frozen_weights})
    assert any(len(x.sharding.device_set) == 8 and not x.is_fully_replicated for x in jax.tree.leaves(st.params))
    sharded = train.evaluate(setup, st.params, st.model_state, split="val", batches=1, mesh=mesh)
    host = train.evaluate(setup, jax.device_get(st.params), jax.device_get(st.model_state), split="val", batches=1)
    assert sharded.keys() == host.keys() and np.isfinite(sharded["loss_latent"])
    for k, v in host.items():
        if isinstance(v, float):
            np.testing.assert_allclose(sharded[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow  # two processes each compile the VideoLLaMA step and the evaluation (~1-3 min on a busy CPU)
def test_vla_step_and_evaluation_on_two_processes(tmp_path: pathlib.Path, demo_data: str) -> None:
    import subprocess
    import sys

    tok, vq = write_tokenizers(tmp_path)
    coord = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(HERE / "vla_worker.py"), demo_data, tok, vq, str(tmp_path / "run"),
                               "--coordinator", coord, "--num_processes", "2", "--process_id", str(i)],
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [_finish(p, timeout=600) for p in procs]
    evals = []
    for text in outs:
        assert "DONE steps=2" in text, text[-3000:]
        evals.append(json.loads(next(line for line in text.splitlines() if line.startswith("EVAL "))[5:]))
    assert evals[0] == evals[1]  # every process ran the evaluation and got the same numbers
    assert np.isfinite(evals[0]["loss_latent"]) and evals[0]["latent_targets"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"] == evals[0] and summary["steps"] == 2
