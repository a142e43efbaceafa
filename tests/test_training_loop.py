"""The run loop: workdir policy, NaN guard, logging outputs, checkpoint items, partial weight loading."""

from __future__ import annotations

import json
import pathlib

import jax
import ml_dtypes
import numpy as np
import pytest
from training_utils import Data, config, init_fn, loss_fn

from latent_pretraining.training import checkpoint, distributed, loop, mesh, optim, sharding, state, step


def _run(workdir: pathlib.Path, cfg=None, data=None, **kw) -> loop.RunResult:
    return loop.run(config=cfg or config(total_steps=4, every=2), workdir=str(workdir), init_fn=init_fn,
                    loss_fn=loss_fn, data=data or Data(), **kw)


def test_workdir_policy(tmp_path: pathlib.Path) -> None:
    wd = tmp_path / "run"
    checkpoint.prepare_workdir(str(wd), resume=False, overwrite=False)  # new: fine
    (wd / "something").write_text("x")
    with pytest.raises(checkpoint.WorkdirExistsError, match=r"--resume .* or --overwrite"):
        checkpoint.prepare_workdir(str(wd), resume=False, overwrite=False)
    assert (wd / "something").exists()  # nothing touched
    with pytest.raises(ValueError, match="not both"):
        checkpoint.prepare_workdir(str(wd), resume=True, overwrite=True)
    checkpoint.prepare_workdir(str(wd), resume=True, overwrite=False)
    assert (wd / "something").exists()
    checkpoint.prepare_workdir(str(wd), resume=False, overwrite=True)
    assert wd.exists() and not any(wd.iterdir())


def test_nan_in_batch_names_step_and_metric(tmp_path: pathlib.Path) -> None:
    cfg = config(total_steps=6, every=2)
    with pytest.raises(step.NonFiniteError, match=r"step 4: .*loss=nan") as err:
        _run(tmp_path / "stop", cfg, Data(nan_at=3))  # batch 3 is consumed by step 4
    assert "mse=nan" in str(err.value)
    assert checkpoint.Checkpointer(str(tmp_path / "stop" / "checkpoints")).all_steps() == [2]  # no NaN state saved

    cfg.skip_nonfinite = True
    res = _run(tmp_path / "skip", cfg, Data(nan_at=3))
    assert res.step == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(res.state.params))


def test_check_finite_unit() -> None:
    assert step.check_finite({"loss": 1.0, "nonfinite": 0.0}, 3)
    with pytest.raises(step.NonFiniteError, match="step 7: grad_norm=inf"):
        step.check_finite({"loss": 1.0, "grad_norm": np.inf}, 7)
    assert not step.check_finite({"loss": np.nan}, 7, skip=True)


def test_outputs_logging_assets_and_resume_noop(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    cfg = config(total_steps=4, every=2)
    cfg.log.tensorboard = True
    cfg.log.every = 2
    cfg.checkpoint.keep = 1
    cfg.checkpoint.milestone_every = 2
    res = _run(tmp_path, cfg, assets={"norm_stats.json": {"mean": [0.0]}, "tokenizer.model": b"\x00\xff"},
               items_per_step=16, flops_per_step=1e6)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert lines[0].startswith("step 2 | loss=") and "samples/s" in lines[0]  # plain lines: stdout is not a TTY
    assert res.metrics.keys() >= {"loss", "mse", "noise_term", "grad_norm", "param_norm", "update_norm", "lr"}
    import tensorflow as tf

    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    tags = {(e.step, v.tag) for e in tf.compat.v1.train.summary_iterator(str(events)) for v in e.summary.value}
    assert {(2, "loss"), (4, "loss"), (4, "perf/steps_per_sec"), (4, "perf/model_tflops_per_sec")} <= tags
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["2", "4"]  # keep 1 + milestones every 2
    assert sorted(p.name for p in (ck / "4").iterdir() if p.is_dir()) == [
        "assets", "data", "params", "train_state"]
    assets = checkpoint.read_assets(str(ck))
    assert json.loads(assets["config.json"])["total_steps"] == 4
    assert json.loads(assets["norm_stats.json"]) == {"mean": [0.0]} and assets["tokenizer.model"] == b"\x00\xff"
    params = checkpoint.load_params(str(ck))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), params, res.state.params)
    ema = checkpoint.load_params(str(ck), ema=True)
    assert jax.tree.structure(ema) == jax.tree.structure(params)
    again = _run(tmp_path, cfg, resume=True)  # finished run: resume restores and does nothing
    assert again.step == 4


def test_data_iterator_end_and_text_fields(tmp_path: pathlib.Path) -> None:
    with_text = ({**b, "text": np.array([b"push the red block"] * len(b["y"]))} for b in Data())
    with pytest.raises(TypeError, match=r"batch field \['text'\] has non-numeric dtype"):
        distributed.to_global(next(with_text), mesh.batch_sharding(mesh.make_mesh({"fsdp": -1}), 1))
    drop_text = lambda b: {k: v for k, v in b.items() if k != "text"}
    batches = [next(with_text), next(with_text)]
    with pytest.raises(RuntimeError, match="data iterator ended after 2 steps"):
        _run(tmp_path, data=iter(batches), batch_fn=drop_text)


def test_partial_load_and_shardings() -> None:
    m = mesh.make_mesh({"fsdp": -1})
    abstract = sharding.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0))["params"])
    c = optim.default_config()
    tx, _ = optim.make_optimizer(c, 10, abstract)
    kernel = np.full((8, 32), 0.5, np.float32)
    loaded = {"Dense_0": {"kernel": kernel.astype(ml_dtypes.bfloat16)}, "LayerNorm_0": {"scale": np.ones(32)}}
    st, shardings, report = state.create_train_state(init_fn, tx, m, jax.random.PRNGKey(0), loaded_params=loaded)
    np.testing.assert_array_equal(np.asarray(st.params["Dense_0"]["kernel"]), kernel)
    assert st.params["Dense_0"]["kernel"].dtype == np.float32
    assert report.loaded == ["Dense_0/kernel", "LayerNorm_0/scale"]
    assert sorted(report.cast) == ["Dense_0/kernel", "LayerNorm_0/scale"]  # bf16 / f64 -> the model's f32
    assert "Dense_1/kernel" in report.missing
    fresh, _, _ = state.create_train_state(init_fn, tx, m, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(st.params["Dense_1"]["kernel"]),
                                  np.asarray(fresh.params["Dense_1"]["kernel"]))
    # logical names ("embed" -> fsdp) shard the kernel; Adam moments follow their param's sharding
    assert st.params["Dense_0"]["kernel"].sharding.spec == shardings.params["Dense_0"]["kernel"].spec
    mu = st.opt_state[1][0].mu["Dense_0"]["kernel"]
    assert mu.sharding.spec == st.params["Dense_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)

    with pytest.raises(ValueError, match=r"'Dense_0/kernel': checkpoint shape \(4, 32\) != model shape \(8, 32\)"):
        state.create_train_state(init_fn, tx, m, jax.random.PRNGKey(0),
                                 loaded_params={"Dense_0/kernel": np.zeros((4, 32), np.float32)})
    with pytest.raises(ValueError, match="the model lacks"):
        state.create_train_state(init_fn, tx, m, jax.random.PRNGKey(0), loaded_params={"head/w": np.zeros(3)})
    with pytest.raises(ValueError, match="cannot be cast"):
        state.create_train_state(init_fn, tx, m, jax.random.PRNGKey(0),
                                 loaded_params={"Dense_0/bias": np.zeros(32, np.int32)})


def test_distributed_config_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize(distributed.default_config()) is False  # single process: no-op
    c = distributed.default_config()
    c.coordinator_address = "127.0.0.1:1234"
    with pytest.raises(ValueError, match="num_processes"):
        distributed.initialize(c)
    assert distributed.process_batch_size(16) == 16


def test_relative_workdir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Orbax needs absolute paths; a relative --workdir must still checkpoint (async) and resume."""
    monkeypatch.chdir(tmp_path)
    _run(pathlib.Path("rel"), config(total_steps=4, every=2), Data())
    assert checkpoint.Checkpointer("rel/checkpoints").all_steps() == [2, 4]
