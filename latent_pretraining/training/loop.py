"""The generic training loop every stage trainer (LAM, VQGAN, VideoLLaMA, fine-tuning) calls.

    result = loop.run(
        config=config,                      # loop.default_config() merged into the stage's config (see below)
        workdir="runs/x", resume=False, overwrite=False,
        init_fn=lambda rng: model.init(rng, dummy_batch),
        loss_fn=loss_fn,                    # (params, batch, rng) -> (loss, {"term": value, ...}); see step.py
        data=iterator,                      # yields this process's slice of the batch (numpy) or global jax.Arrays;
                                            # optional get_state() / set_state(s) for exact resume
        assets={"norm_stats.json": stats},  # extra checkpoint assets (config.json is added)
        items_per_step=global_batch * seq_len, item_name="tokens", flops_per_step=6 * n_params * tokens,
        hooks=[eval_hook],                  # hook(step, state, host_metrics, logger); see `Hook` (deferred)
    )

Step numbering: a step is named by the number of updates done, i.e. `state.step` after the update. The update that
consumes batch i (0-based) is step i + 1; metrics, log lines, NaN messages and checkpoints use that number (the
checkpoint "100" has seen 100 batches).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, Sharding

from core.errors import UserError, unknown
from latent_pretraining.training import checkpoint as ckpt_lib
from latent_pretraining.training import distributed, optim
from latent_pretraining.training import mesh as mesh_lib
from latent_pretraining.training import rundir as rundir_lib
from latent_pretraining.training import sharding as sharding_lib
from latent_pretraining.training import state as state_lib
from latent_pretraining.training import step as step_lib
from latent_pretraining.training.metrics import MetricLogger

PyTree = Any
Hook = Callable[[int, state_lib.TrainState | None, Mapping[str, Any], MetricLogger], None]
"""hook(step, state, host metrics of that step, logger). A plain hook is called right after every step (which makes
the loop fetch metrics every step). A hook with the attribute `deferred = True` is called at the next sync step (a
log, checkpoint or last step), once per step in step order with that step's metrics; `state` is the current state at
the sync step itself and None for the earlier steps (their states are gone)."""


def _fetch(metrics: list[dict[str, jax.Array]]) -> list[dict[str, Any]]:
    """Device metrics of several steps -> host numpy, in one transfer (a module function so tests can count calls)."""
    return jax.device_get(metrics)


def default_config() -> ml_collections.ConfigDict:
    """Training-loop config: embed as-is in each stage's config (`config.train = loop.default_config()`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.skip_nonfinite = False  # True: a NaN/inf step leaves the state unchanged instead of stopping the run
    c.mesh = ml_collections.ConfigDict({"dp": 1, "fsdp": -1, "tp": 1, "sp": 1})
    c.optimizer = optim.default_config()
    c.checkpoint = ml_collections.ConfigDict(
        {"every": 1000, "keep": 3, "milestone_every": 0, "async_save": True}
    )
    c.log = ml_collections.ConfigDict(
        {"every": 10, "tensorboard": True, "wandb_project": "", "progress": "auto", "peak_flops_per_device": 0.0,
         "main_metrics": ("loss",)}
    )
    c.distributed = distributed.default_config()
    return c


def define_flags() -> None:
    """absl flags shared by the stage scripts: --workdir, --resume, --overwrite (--config comes from config_flags)."""
    from absl import flags

    flags.DEFINE_string("workdir", None, "Run directory (checkpoints/, tensorboard/).", required=True)
    flags.DEFINE_bool("resume", False, "Continue from the latest complete checkpoint in --workdir.")
    flags.DEFINE_bool("overwrite", False, "Replace --workdir with a fresh run (the old run is kept aside until the "
                      "new run's first checkpoint commits, and put back if the new run fails before that).")


@dataclasses.dataclass
class RunResult:
    state: state_lib.TrainState
    step: int
    metrics: dict[str, float]  # the last step's host metrics
    interrupted: bool  # stopped by SIGTERM/SIGINT (after saving a checkpoint)


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and returns. A second SIGINT interrupts at once."""

    def __init__(self):
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("received %s: saving a checkpoint after the current step", signal.Signals(signum).name)
        self.flag = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _config_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


class ConfigError(UserError, ValueError):
    """A training-loop config value that cannot work (found before anything is written)."""


def validate(config: ml_collections.ConfigDict, *, batch_size: int | None = None, mesh: Mesh | None = None,
             batch_name: str = "the batch size") -> Mesh:
    """Checks the loop config (mesh vs devices, batch size, intervals) and returns the mesh; raises `ConfigError`.

    Cheap (no data, no compilation): trainers call it first so a bad config fails in a second with one line, and
    `run` calls it again before it touches the workdir. `batch_size` is the global batch per step; `batch_name` is
    how messages call it (e.g. the config field "data.batch_size").
    """
    for key, low in (("total_steps", 0), ("checkpoint.every", 1), ("checkpoint.keep", 1), ("log.every", 1),
                     ("optimizer.grad_accum_steps", 1)):
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        value = node[key.split(".")[-1]]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"train.{key} must be an integer >= {low}, got {value!r}")
    if config.log.progress not in ("auto", "on", "off"):
        raise ConfigError(unknown("train.log.progress", config.log.progress, ("auto", "on", "off")))
    if mesh is None:
        try:
            mesh = mesh_lib.make_mesh(dict(config.mesh))
        except ValueError as e:
            raise ConfigError(f"train.mesh: {e}") from None
    if batch_size is not None:
        dp = mesh_lib.data_parallel_size(mesh)
        accum = int(config.optimizer.grad_accum_steps)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size <= 0:
            raise ConfigError(f"{batch_name} must be a positive integer, got {batch_size!r}")
        if batch_size % dp:
            raise ConfigError(
                f"{batch_name} {batch_size} is not divisible by the {dp} data-parallel devices (mesh dp="
                f"{mesh.shape['dp']} x fsdp={mesh.shape['fsdp']}); use a multiple of {dp}")
        if batch_size % (dp * accum):
            raise ConfigError(
                f"{batch_name} {batch_size} does not split into train.optimizer.grad_accum_steps={accum} micro-batches "
                f"over {dp} data-parallel devices; use a multiple of {dp * accum}")
    return mesh


def run(
    *,
    config: ml_collections.ConfigDict,
    workdir: str,
    init_fn: state_lib.InitFn,
    loss_fn: step_lib.LossFn,
    data: Iterator[PyTree],
    resume: bool = False,
    overwrite: bool = False,
    assets: Mapping[str, Any] | None = None,
    items_per_step: float = 0.0,
    item_name: str = "samples",
    flops_per_step: float = 0.0,
    hooks: Sequence[Hook] = (),
    mesh: Mesh | None = None,
    batch_sharding: Sharding | PyTree | None = None,
    batch_fn: Callable[[PyTree], PyTree] | None = None,
    loaded_params: PyTree | None = None,
    loaded_model_state: PyTree | None = None,
    full_config: ml_collections.ConfigDict | None = None,
    batch_size: int | None = None,
    data_fingerprint: str | None = None,
) -> RunResult:
    """Trains until `config.total_steps` (or a stop signal); checkpoints every `config.checkpoint.every` and at the end.

    Everything that can be checked is checked before the workdir is touched (`validate`, the optimizer, the shapes
    of `loaded_params`). A start that fails before its first checkpoint commits leaves the workdir as it found it;
    with `overwrite` the old run is put back (see `rundir`).

    Args:
      config: `default_config()`-shaped (the stage may hold it as `config.train`).
      workdir: run directory (checkpoints/, tensorboard/). Existing and non-empty: needs `resume` or `overwrite`.
      init_fn, loss_fn: model init and loss (see state.py / step.py).
      data: batches; with `get_state`/`set_state` its position is checkpointed, otherwise a resumed run
        fast-forwards it by the number of steps done (exact for deterministic iterators, slow for long runs).
      assets: extra checkpoint files; `config.json` (of `full_config`, default `config`) is always included.
      items_per_step, item_name, flops_per_step: throughput / MFU logging (global per step).
      hooks: called on every process with (step, state, host metrics, logger): after every step, or, for hooks
        marked `deferred`, at the next sync step (see `Hook`). Metrics are fetched to the host only at sync steps
        (log, checkpoint and last steps; every step while a plain hook is present), and the stop signal is checked
        there too, so a SIGTERM stops the run at the next sync step. Checkpoints are sync steps, so a non-finite
        step is still caught before its state is saved.
      mesh: default `mesh.make_mesh(config.mesh)`; batch_sharding: default batch over (dp, fsdp).
      batch_fn: host-side transform of each batch before it goes to devices (e.g. tokenize / drop text fields).
      loaded_params: partial weights for a fresh start (ignored when resuming from a checkpoint).
      loaded_model_state: values of the non-trained collections for a fresh start (e.g. frozen tokenizers).
      batch_size: the global batch size, validated up front (> 0, divisible by the data-parallel devices).
      data_fingerprint: identifies the training data; stored with every checkpoint, and a resume from a checkpoint
        with a different one is refused (`checkpoint.DataFingerprintError`).
    """
    mesh = validate(config, batch_size=batch_size, mesh=mesh)
    if resume and overwrite:
        raise rundir_lib.FlagConflictError("pass either --resume or --overwrite, not both")
    batch_sharding = batch_sharding if batch_sharding is not None else mesh_lib.batch_sharding(mesh, 1)
    rng = jax.random.PRNGKey(config.seed)
    with jax.set_mesh(mesh):
        abstract_params = sharding_lib.unbox(jax.eval_shape(init_fn, rng)["params"])
        tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps, abstract_params)
        trainable = optim.trainable_mask(abstract_params, config.optimizer) if config.optimizer.frozen else None
        if loaded_params is not None:  # wrong init-checkpoint shapes fail here, before the workdir is touched
            state_lib.check_loaded(abstract_params, loaded_params)

    run_dir = ckpt_lib.prepare_workdir(workdir, resume=resume, overwrite=overwrite)
    try:
        with jax.set_mesh(mesh):  # activation constraints (sharding.with_logical_constraint) need the mesh set
            result = _train(config, workdir, run_dir, init_fn, loss_fn, data, tx, schedule, trainable, mesh,
                            batch_sharding, batch_fn, assets, loaded_params, loaded_model_state, full_config,
                            data_fingerprint, hooks, dict(items_per_step=items_per_step, item_name=item_name,
                                                          flops_per_step=flops_per_step))
    except BaseException:
        run_dir.abort()
        raise
    run_dir.commit()
    return result


def _restore(ckpt: ckpt_lib.Checkpointer, init_fn, tx, mesh, rng, ema, data, workdir, data_fingerprint):
    """(state, shardings) from the newest intact checkpoint, or None when there is none."""
    latest = ckpt.choose_step()
    if latest is None:
        return None
    ckpt_lib.check_fingerprint(ckpt.directory, latest, data_fingerprint)
    abstract, shardings = state_lib.abstract_train_state(init_fn, tx, mesh, rng, ema=ema)
    state, data_state = ckpt.restore(abstract, latest, verified=True)
    logging.info("resumed from %s/checkpoints/%d", workdir, latest)
    if hasattr(data, "set_state") and data_state is not None:
        try:
            data.set_state(data_state)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ckpt_lib.CheckpointRestoreError(
                f"checkpoint {ckpt.directory}/{latest}: the data iterator rejected its saved state ({e!r}); "
                "resume with the data it was trained on") from e
    else:
        logging.warning("data iterator has no saved state: fast-forwarding %d batches", latest)
        for _ in range(latest):
            next(data)
    return state, shardings


def _train(config, workdir, run_dir, init_fn, loss_fn, data, tx, schedule, trainable, mesh, batch_sharding,
           batch_fn, assets, loaded_params, loaded_model_state, full_config, data_fingerprint, hooks, perf
           ) -> RunResult:
    rng = jax.random.PRNGKey(config.seed)
    ema = config.optimizer.ema_decay > 0
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                 milestone_every=config.checkpoint.milestone_every,
                                 async_save=config.checkpoint.async_save)
    try:
        restored = _restore(ckpt, init_fn, tx, mesh, rng, ema, data, workdir, data_fingerprint)
    except BaseException:
        ckpt.close()
        raise
    if restored is not None:
        state, shardings = restored
    else:
        if run_dir.aside is None and not run_dir.owned:
            logging.info("--resume: no checkpoint in %s, starting fresh", workdir)
        state, shardings, report = state_lib.create_train_state(
            init_fn, tx, mesh, rng, ema=ema, loaded_params=loaded_params, loaded_model_state=loaded_model_state
        )
        if report is not None:
            assets = {**(assets or {}), "partial_load.json": dataclasses.asdict(report)}
    all_assets = {"config.json": _config_json(full_config or config), **(assets or {})}
    if data_fingerprint is not None:
        all_assets[ckpt_lib.FINGERPRINT_ASSET] = {"fingerprint": data_fingerprint}

    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(
            loss_fn, tx, schedule=schedule, trainable=trainable,
            grad_accum_steps=config.optimizer.grad_accum_steps, ema_decay=config.optimizer.ema_decay,
            skip_nonfinite=config.skip_nonfinite,
        ),
        shardings,
        batch_sharding,
    )
    step = int(jax.device_get(state.step))
    progress = {"auto": None, "on": True, "off": False}[config.log.progress]
    logger = MetricLogger(
        workdir, total_steps=config.total_steps, start_step=step, log_every=config.log.every,
        tensorboard=config.log.tensorboard, peak_flops_per_device=config.log.peak_flops_per_device,
        wandb_project=config.log.wandb_project, config=(full_config or config).to_dict(), progress=progress,
        main_metrics=tuple(config.log.main_metrics), **perf,
    )
    first_save: int | None = None

    def save() -> None:
        nonlocal first_save
        data_state = data.get_state() if hasattr(data, "get_state") else None
        ckpt.save(state, data_state=data_state, assets=all_assets)
        first_save = step if first_save is None else first_save

    host_metrics: dict[str, Any] = {}
    interrupted = False
    # Metrics stay on device between sync steps (log, checkpoint and last steps): fetching them every step would
    # block the host on each step and stall asynchronous dispatch. A plain-function hook still needs them every
    # step, so it makes every step a sync step (the old behaviour); `deferred` hooks (see `Hook`) do not.
    every_step = any(not getattr(h, "deferred", False) for h in hooks)
    pending: list[tuple[int, dict[str, Any]]] = []
    try:
        with _StopSignal() as stop:
            while step < config.total_steps:
                try:
                    batch = next(data)
                except StopIteration:
                    raise RuntimeError(f"the data iterator ended after {step} steps (total_steps="
                                       f"{config.total_steps}); make it repeat or lower total_steps") from None
                if batch_fn is not None:
                    batch = batch_fn(batch)
                batch = distributed.to_global(batch, batch_sharding)
                state, metrics = train_step(state, batch)
                step += 1
                pending.append((step, metrics))
                ckpt_step = step % config.checkpoint.every == 0 or step == config.total_steps
                if not (every_step or ckpt_step or step % config.log.every == 0):
                    continue
                # one transfer for every step since the last sync; then each step is checked, logged and hooked
                # in order, exactly as if it had been fetched on its own
                fetched = _fetch([m for _, m in pending])
                for (s, _), host_metrics in zip(pending, fetched, strict=True):
                    if not step_lib.check_finite(host_metrics, s, skip=config.skip_nonfinite):
                        logging.warning("step %d: non-finite loss or grads, update skipped", s)
                    logger.update(s, host_metrics)
                    for hook in hooks:
                        hook(s, state if s == step else None, host_metrics, logger)
                pending.clear()
                interrupted = distributed.any_process(stop.flag)
                if interrupted or ckpt_step:
                    save()
                if first_save is not None and not run_dir.committed and ckpt.is_committed(first_save):
                    run_dir.commit()  # --overwrite: the old run goes once the new one has a checkpoint on disk
                if interrupted:
                    logging.warning("stopped by signal at step %d; checkpoint saved", step)
                    break
            logger.flush(step)
    finally:
        ckpt.close()
        logger.close()
    return RunResult(state=state, step=step, metrics={k: float(v) for k, v in host_metrics.items()},
                     interrupted=interrupted)
