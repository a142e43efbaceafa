"""Orbax checkpoints: async saves, keep-last-K + milestones, items params / train_state / data / assets.

Layout: `<workdir>/checkpoints/<step>/{params, train_state, data, assets}`.

- `params`      the raw params (what inference and weight loading read; `load_params(..., ema=True)` reads the EMA).
- `train_state` step, optimizer state, rng, EMA params, model_state (non-trained collections).
- `data`        the data iterator state (`iterator.get_state()`), JSON; bytes are stored base64-encoded.
- `assets`      files: config.json, normalization stats, tokenizer files, metadata of frozen models (LAM/VQGAN).

Orbax writes each step into a temporary directory and renames it when every item is committed, so a run killed in
the middle of a save leaves only a `*.orbax-checkpoint-tmp-*` directory, which `latest_step()` ignores and the next
manager removes: a half-written checkpoint is never resumed from.

Integrity: after every item is written and before orbax renames the step directory, `integrity.json` (size and
sha256 of every file under the item directories) is written into it, so the manifest commits atomically with the
data. Restores verify it (`verify`, `select_step`): a flipped byte, a truncated or zeroed file, a missing or unlisted
file, or an unreadable data-iterator state makes the checkpoint *corrupt*; the newest intact checkpoint is used
instead (with a warning naming the corrupt one), and `CheckpointCorruptError` is raised when none is intact.
Checkpoints written before manifests existed (no `checkpoint_format.json` asset) restore unverified, with a warning.
Orbax's own top-level bookkeeping (`_CHECKPOINT_METADATA`, `commit_success.txt`, written at the rename) is outside
the manifest: it holds no values.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from core.errors import UserError
from latent_pretraining.training import rundir
from latent_pretraining.training.rundir import WorkdirExistsError  # noqa: F401  (re-exported: its old home)
from latent_pretraining.training.state import TrainState

PyTree = Any
ITEMS = ("params", "train_state", "data", "assets")
MANIFEST = "integrity.json"
FORMAT_ASSET = "checkpoint_format.json"  # present in every checkpoint sealed with a manifest
FINGERPRINT_ASSET = "data_fingerprint.json"
DATA_FILE = "data/metadata"  # where orbax's JsonSave puts the data-iterator state


class CheckpointCorruptError(UserError, RuntimeError):
    """No intact checkpoint to restore (every candidate failed its integrity check)."""


class CheckpointRestoreError(UserError, RuntimeError):
    """An intact checkpoint does not fit what the run builds (model, optimizer or data iterator changed)."""


class DataFingerprintError(UserError, ValueError):
    """A resumed run reads different data than its checkpoint was trained on."""


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
def prepare_workdir(workdir: str, *, resume: bool, overwrite: bool) -> rundir.RunDir:
    """The --resume / --overwrite policy (see `rundir.prepare`); returns the handle to commit or abort the start."""
    return rundir.prepare(workdir, resume=resume, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------------- integrity
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _item_files(step_dir: str) -> list[str]:
    """Relative paths of every file under the item directories of a step directory."""
    out = []
    for item in ITEMS:
        root = os.path.join(step_dir, item)
        for dirpath, _, files in os.walk(root):
            out.extend(os.path.relpath(os.path.join(dirpath, f), step_dir) for f in files)
    return sorted(out)


def write_manifest(step_dir: str) -> None:
    """Writes `<step_dir>/integrity.json`: {"files": {relpath: {"size", "sha256"}}} of every item file."""
    files = _item_files(step_dir)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(lambda f: _sha256(os.path.join(step_dir, f)), files))
    manifest = {"version": 1, "algorithm": "sha256",
                "files": {f: {"size": os.path.getsize(os.path.join(step_dir, f)), "sha256": d}
                          for f, d in zip(files, digests, strict=True)}}
    tmp = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify(step_dir: str) -> tuple[bool, str]:
    """(usable, note) for one step directory. note is "" when verified, else why it is corrupt / unverified."""
    mpath = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(mpath):
        if os.path.exists(os.path.join(step_dir, "assets", FORMAT_ASSET)):
            return False, f"its {MANIFEST} is missing"
        return True, f"written without an {MANIFEST} (older version): restored unverified"
    try:
        with open(mpath) as fh:
            listed = json.load(fh)["files"]
        listed = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return False, f"its {MANIFEST} is unreadable ({type(e).__name__})"
    on_disk = set(_item_files(step_dir))
    if missing := sorted(set(listed) - on_disk):
        return False, f"file {missing[0]} is missing" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra := sorted(on_disk - set(listed)):
        return False, f"file {extra[0]} is not in its {MANIFEST}"
    for rel, (size, _) in sorted(listed.items()):
        got = os.path.getsize(os.path.join(step_dir, rel))
        if got != size:
            return False, f"file {rel} has {got} bytes, {size} were written (truncated or extended)"
    names = sorted(listed)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda f: _sha256(os.path.join(step_dir, f)), names))
    for rel, digest in zip(names, digests, strict=True):
        if digest != listed[rel][1]:
            return False, f"file {rel} does not match its sha256 (bytes changed on disk)"
    if DATA_FILE in listed:  # the checksum matched what was written; check that it is the JSON `save` wrote
        try:
            with open(os.path.join(step_dir, DATA_FILE)) as fh:
                if "state" not in json.load(fh):
                    raise ValueError("no 'state' key")
        except (OSError, ValueError, TypeError) as e:
            return False, f"its data-iterator state {DATA_FILE} is not valid ({e})"
    return True, ""


def step_dirs(directory: str) -> list[int]:
    """Committed step numbers in a checkpoint directory, newest first."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n))),
                  reverse=True)


def select_step(directory: str, step: int | None = None) -> tuple[int | None, list[int]]:
    """(the step to restore, the corrupt steps newer than it). `step` given: only that one is considered.

    Warns for each corrupt checkpoint; raises `CheckpointCorruptError` (one line) when checkpoints exist but none is
    intact; (None, []) when there are none.
    """
    directory = os.path.abspath(os.fspath(directory))
    candidates = [step] if step is not None else step_dirs(directory)
    if step is not None and not os.path.isdir(os.path.join(directory, str(step))):
        raise FileNotFoundError(f"no checkpoint {step} in {directory} (have: {sorted(step_dirs(directory))})")
    bad: list[tuple[int, str]] = []
    for s in candidates:
        ok, note = verify(os.path.join(directory, str(s)))
        if ok:
            if note:
                logging.warning("checkpoint %s/%d: %s", directory, s, note)
            return s, [b for b, _ in bad]
        logging.warning("checkpoint %s/%d is corrupt: %s; falling back to the previous checkpoint", directory, s, note)
        bad.append((s, note))
    if bad and step is not None:
        raise CheckpointCorruptError(f"checkpoint {directory}/{step} is corrupt: {bad[0][1]}; use another step")
    if bad:
        detail = "; ".join(f"{s}: {note}" for s, note in bad)
        raise CheckpointCorruptError(
            f"no intact checkpoint in {directory} ({detail}); restore the files from a backup, or start over with "
            "--overwrite")
    return None, []


def verified_step(directory: str, step: int | None = None) -> int:
    """The step to load: `step` if intact (else `CheckpointCorruptError`), by default the newest intact one (newer
    corrupt ones are skipped with a warning). Read the config assets and restore the arrays of this one step, so
    the two always come from the same checkpoint."""
    chosen, _ = select_step(directory, None if step is None else int(step))
    if chosen is None:
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    return int(chosen)


def read_asset(directory: str, step: int, name: str) -> bytes | None:
    """One asset file of a committed step, read directly (None if absent)."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), str(step), "assets", name)
    return epath.Path(path).read_bytes() if os.path.exists(path) else None


def check_fingerprint(directory: str, step: int, fingerprint: str | None) -> None:
    """Refuses (one line) to resume from a checkpoint trained on other data; warns when it cannot tell."""
    raw = read_asset(directory, step, FINGERPRINT_ASSET)
    saved = json.loads(raw)["fingerprint"] if raw is not None else None
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise DataFingerprintError(
            f"data fingerprint mismatch: checkpoint {directory}/{step} was trained on data {saved!r} but this run "
            f"reads {fingerprint!r}; resume with the same data, or start a new run (another --workdir or "
            "--overwrite)")
    if fingerprint is not None and saved is None:
        logging.warning("checkpoint %s/%d has no data fingerprint: the data cannot be checked", directory, step)


# --------------------------------------------------------------------------------------------------- the manager
class Checkpointer:
    """A thin policy layer over `ocp.CheckpointManager` (every process must call save/restore)."""

    def __init__(self, directory: str, *, keep: int = 3, milestone_every: int = 0, async_save: bool = True):
        policies: list[Any] = [ocm.LatestN(n=keep)]
        if milestone_every:
            policies.append(ocm.EveryNSteps(interval_steps=milestone_every))
        # Always orbax's async checkpointer: its post-finalization callback runs after every item is written and
        # before the step directory is renamed, which is where the manifest goes. async_save=False waits instead.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
            cleanup_tmp_directories=True,
            create=True,
        )
        self.async_save = async_save
        self._saving: int | None = None
        self.directory = os.path.abspath(os.fspath(directory))  # orbax requires absolute paths
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def _seal(self) -> None:
        """Writes the manifest into the step being saved (orbax's save thread, primary process, before the rename)."""
        step = self._saving
        if step is None:
            return
        tmp = glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
        final = os.path.join(self.directory, str(step))
        target = max(tmp, key=os.path.getmtime) if tmp else final  # no tmp dir: a commit-file file system
        write_manifest(target)

    def is_committed(self, step: int) -> bool:
        """Whether `step` has been renamed into place (its save finished)."""
        return os.path.isdir(os.path.join(self.directory, str(step)))

    def choose_step(self, step: int | None = None) -> int | None:
        """The newest intact step (see `select_step`); corrupt newer ones are moved to `<workdir>/corrupt_checkpoints`
        so that this run's own saves of those step numbers are not skipped. Decided by process 0 for all."""
        code, message = -1, ""
        if jax.process_index() == 0:
            try:
                chosen, bad = select_step(self.directory, step)
                code = -1 if chosen is None else chosen
                for b in bad:
                    dest = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints",
                                        f"{b}-{time.strftime('%Y%m%d-%H%M%S')}")
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    os.rename(os.path.join(self.directory, str(b)), dest)
                    logging.warning("moved corrupt checkpoint %d to %s", b, dest)
            except (CheckpointCorruptError, FileNotFoundError) as e:
                code, message = -2, str(e)
        if jax.process_count() > 1:
            code = int(multihost_utils.broadcast_one_to_all(jax.numpy.int32(code)))
        if code == -2:
            raise CheckpointCorruptError(message or f"no intact checkpoint in {self.directory} (see process 0)")
        self.manager.reload()
        return None if code == -1 else code

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
        self.manager.wait_until_finished()  # the previous save's manifest callback reads self._saving
        self._saving = step
        rest = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng,
                "ema_params": state.ema_params, "model_state": state.model_state}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train_state=ocp.args.StandardSave(rest),
            data=ocp.args.JsonSave({"state": _encode(data_state)}),
            assets=AssetsSave({FORMAT_ASSET: {"integrity_manifest": MANIFEST, "version": 1}, **dict(assets or {})}),
        )
        started = self.manager.save(step, args=args, force=True)
        if not self.async_save:
            self.manager.wait_until_finished()
        return started

    def restore(self, abstract_state: TrainState, step: int | None = None, *, verified: bool = False
                ) -> tuple[TrainState, Any]:
        """(state, data_state) from `step` (default: the newest intact one, see `choose_step`), verified first
        unless `verified` (the step came from `choose_step`). `abstract_state` carries the target shardings."""
        if step is None or not verified:
            step = self.choose_step(step)
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        a = abstract_state
        rest = {"step": a.step, "opt_state": a.opt_state, "rng": a.rng,
                "ema_params": a.ema_params, "model_state": a.model_state}
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(a.params),
                    train_state=ocp.args.StandardRestore(rest),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except (ValueError, KeyError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CheckpointRestoreError(
                f"checkpoint {self.directory}/{step} does not fit the model/optimizer this run builds ({first}); "
                "use the config it was trained with, or start a new run") from e
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
    step = verified_step(directory, step)
    with ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        return m.restore(step, args=ocp.args.Composite(assets=AssetsRestore()))["assets"]


def load_params(directory: str, step: int | None = None, *, target: PyTree | None = None, ema: bool = False) -> PyTree:
    """Params (or the EMA params) of a checkpoint, e.g. for `state.create_train_state(loaded_params=...)`.

    `target` (a tree of arrays / ShapeDtypeStructs with shardings) places them; None restores as saved.
    """
    step = verified_step(directory, step)
    with ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), item_names=ITEMS,
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        if not ema:
            return m.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
        rest = m.restore(step, args=ocp.args.Composite(train_state=ocp.args.StandardRestore()))["train_state"]
        if rest.get("ema_params") is None:
            raise KeyError(f"checkpoint {directory}/{step} has no EMA params")
        return rest["ema_params"]
