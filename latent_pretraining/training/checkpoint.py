"""Orbax checkpoints: async saves, keep-last-K + milestones, items params / train_state / data / assets.

Layout: `<workdir>/checkpoints/<step>/{params, train_state, data, assets}`.

- `params`      the raw params (what inference and weight loading read; `load_params(..., ema=True)` reads the EMA).
- `train_state` step, optimizer state, rng, EMA params, model_state (non-trained collections).
- `data`        the data iterator state (`iterator.get_state()`), JSON; bytes are stored base64-encoded.
- `assets`      files: config.json, normalization stats, tokenizer files, metadata of frozen models (LAM/VQGAN).

Orbax writes each step into a temporary directory and renames it when every item is committed, so a run killed in
the middle of a save leaves only a `*.orbax-checkpoint-tmp-*` directory, which `latest_step()` ignores and the next
manager removes: a half-written checkpoint is never resumed from.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from latent_pretraining.training.state import TrainState

PyTree = Any
ITEMS = ("params", "train_state", "data", "assets")


class WorkdirExistsError(FileExistsError):
    """The workdir holds a previous run and neither resume nor overwrite was asked for."""


# ----------------------------------------------------------------------------------------------------- assets item
class AssetsHandler(ocp.CheckpointHandler):
    """Writes a dict of files (name -> bytes | str | JSON-able) into the item directory; restores name -> bytes."""

    def save(self, directory: epath.Path, args: AssetsSave) -> None:
        if jax.process_index() != 0:
            return
        for name, value in args.files.items():
            if os.path.isabs(name) or ".." in name.split("/"):
                raise ValueError(f"asset name {name!r} must be a relative path inside the checkpoint")
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, bytes):
                path.write_bytes(value)
            elif isinstance(value, str):
                path.write_text(value)
            else:
                path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))

    def restore(self, directory: epath.Path, args: AssetsRestore | None = None) -> dict[str, bytes]:
        root = os.fspath(directory)
        out = {}
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f == "commit_success.txt" and dirpath == root:  # orbax's marker, not an asset
                    continue
                full = os.path.join(dirpath, f)
                out[os.path.relpath(full, root)] = epath.Path(full).read_bytes()
        return out


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
    files: Mapping[str, Any]


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
    pass


def _encode(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"__bytes_b64__": base64.b64encode(x).decode("ascii")}
    if isinstance(x, Mapping):
        return {str(k): _encode(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_encode(v) for v in x]
    return x


def _decode(x: Any) -> Any:
    if isinstance(x, Mapping):
        if set(x) == {"__bytes_b64__"}:
            return base64.b64decode(x["__bytes_b64__"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------------- workdir
def prepare_workdir(workdir: str, *, resume: bool, overwrite: bool) -> None:
    """Applies the --resume / --overwrite policy (call on every process).

    - neither, and the workdir exists and is not empty: `WorkdirExistsError` (nothing is touched);
    - overwrite: the workdir is deleted (process 0) and recreated;
    - resume: kept; `run` continues from the latest complete checkpoint (or starts fresh if there is none).
    """
    if resume and overwrite:
        raise ValueError("pass either resume or overwrite, not both")
    path = epath.Path(workdir)
    non_empty = path.exists() and any(path.iterdir())
    if non_empty and not (resume or overwrite):
        raise WorkdirExistsError(
            f"workdir {workdir} already exists and is not empty. Pass --resume to continue the run from its latest "
            "checkpoint, or --overwrite to delete it and start fresh."
        )
    if overwrite and non_empty and jax.process_index() == 0:
        logging.warning("--overwrite: deleting %s", workdir)
        shutil.rmtree(os.fspath(path))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("prepare_workdir")
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("prepare_workdir_mkdir")


# --------------------------------------------------------------------------------------------------- the manager
class Checkpointer:
    """A thin policy layer over `ocp.CheckpointManager` (every process must call save/restore)."""

    def __init__(self, directory: str, *, keep: int = 3, milestone_every: int = 0, async_save: bool = True):
        policies: list[Any] = [ocm.LatestN(n=keep)]
        if milestone_every:
            policies.append(ocm.EveryNSteps(interval_steps=milestone_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.directory = os.path.abspath(os.fspath(directory))  # orbax requires absolute paths
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """The newest *complete* checkpoint (temporary / unfinished directories are never listed)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, state: TrainState, *, data_state: Any = None, assets: Mapping[str, Any] | None = None
    ) -> bool:
        """Starts an (async) save of `state` at `state.step`. Returns False if that step already exists."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        rest = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng,
                "ema_params": state.ema_params, "model_state": state.model_state}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train_state=ocp.args.StandardSave(rest),
            data=ocp.args.JsonSave({"state": _encode(data_state)}),
            assets=AssetsSave(dict(assets or {})),
        )
        return self.manager.save(step, args=args, force=True)

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, Any]:
        """(state, data_state) from `step` (default: latest). `abstract_state` carries target shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        a = abstract_state
        rest = {"step": a.step, "opt_state": a.opt_state, "rng": a.rng,
                "ema_params": a.ema_params, "model_state": a.model_state}
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(a.params),
                train_state=ocp.args.StandardRestore(rest),
                data=ocp.args.JsonRestore(),
            ),
        )
        ts = out["train_state"]
        state = TrainState(step=ts["step"], params=out["params"], opt_state=ts["opt_state"], rng=ts["rng"],
                           ema_params=ts.get("ema_params"), model_state=ts.get("model_state"))
        return state, _decode(out["data"]["state"])

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def read_assets(directory: str, step: int | None = None) -> dict[str, bytes]:
    """The asset files of a checkpoint (default: latest) as name -> bytes."""
    with ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        step = m.latest_step() if step is None else step
        return m.restore(step, args=ocp.args.Composite(assets=AssetsRestore()))["assets"]


def load_params(directory: str, step: int | None = None, *, target: PyTree | None = None, ema: bool = False) -> PyTree:
    """Params (or the EMA params) of a checkpoint, e.g. for `state.create_train_state(loaded_params=...)`.

    `target` (a tree of arrays / ShapeDtypeStructs with shardings) places them; None restores as saved.
    """
    with ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        step = m.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        if not ema:
            return m.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
        rest = m.restore(step, args=ocp.args.Composite(train_state=ocp.args.StandardRestore()))["train_state"]
        if rest.get("ema_params") is None:
            raise KeyError(f"checkpoint {directory}/{step} has no EMA params")
        return rest["ema_params"]
