"""The run directory policy: --resume / --overwrite, and never losing a finished run.

    run_dir = prepare(workdir, resume=False, overwrite=True)   # the old run is moved aside, not deleted
    try:
        ...train; the first checkpoint commits...
        run_dir.commit()      # now the old run is deleted
    except BaseException:
        run_dir.abort()       # the new run's files go; the old run is put back
        raise

- neither flag and a non-empty workdir: `WorkdirExistsError`, nothing touched;
- `overwrite`: the old run is renamed to a hidden sibling `.<name>.overwritten-<time>-<pid>` (same file system, so
  the rename is atomic and instant) and deleted only when the new run's first checkpoint has committed. If the new
  run fails before that, `abort` removes what it wrote and renames the old run back. A run killed (SIGKILL) in
  between leaves the sibling; the next start names it in a warning;
- a fresh start (absent or empty workdir) that fails before its first checkpoint leaves the workdir as it was
  (absent or empty), so the corrected rerun is not refused;
- `resume` on a workdir that already holds a run never deletes anything.

Only process 0 touches the file system; the others wait at a barrier (multi-host runs share the workdir).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import time

import jax
from jax.experimental import multihost_utils

from core.errors import UserError

ASIDE_TAG = ".overwritten-"


class WorkdirExistsError(UserError, FileExistsError):
    """The workdir holds a previous run and neither resume nor overwrite was asked for."""


class FlagConflictError(UserError, ValueError):
    """--resume and --overwrite were both given."""


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _aside_glob(path: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}{ASIDE_TAG}*")


def has_committed_checkpoint(path: str) -> bool:
    """Whether `<path>/checkpoints/<step>` exists for some integer step (orbax renames a step dir when it commits)."""
    ck = os.path.join(path, "checkpoints")
    return os.path.isdir(ck) and any(n.isdigit() and os.path.isdir(os.path.join(ck, n)) for n in os.listdir(ck))


@dataclasses.dataclass
class RunDir:
    """What `prepare` did to the workdir, so the run can finish or undo it."""

    path: str
    aside: str | None = None  # where the old run waits (overwrite) until the new run's first checkpoint commits
    owned: bool = False  # the workdir held no run before: on a failed start everything in it is the new run's
    existed: bool = True  # the workdir existed (possibly empty) before
    committed: bool = False

    def commit(self) -> None:
        """The new run has a committed checkpoint (or finished): the old run, if any, is deleted now."""
        if self.committed:
            return
        self.committed = True
        if self.aside and jax.process_index() == 0 and os.path.exists(self.aside):
            logging.info("--overwrite: the new run has committed a checkpoint; deleting the old run at %s", self.aside)
            shutil.rmtree(self.aside, ignore_errors=True)

    def abort(self) -> None:
        """The run failed. Before its first committed checkpoint: remove its files and put the old run back."""
        if self.committed:
            return
        if has_committed_checkpoint(self.path):  # an async save committed after the last check: the run exists
            self.commit()
            return
        if jax.process_index() != 0:
            return
        if self.owned and os.path.exists(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
            if self.existed and not self.aside:
                os.makedirs(self.path, exist_ok=True)
        if self.aside and os.path.exists(self.aside):
            os.rename(self.aside, self.path)
            logging.warning("the new run failed before its first checkpoint: the old run is back in %s", self.path)


def prepare(workdir: str, *, resume: bool, overwrite: bool) -> RunDir:
    """Applies the --resume / --overwrite policy (call on every process, after all validation); see module doc."""
    if resume and overwrite:
        raise FlagConflictError("pass either --resume or --overwrite, not both")
    path = os.path.abspath(os.fspath(workdir))
    existed = os.path.exists(path)
    if existed and not os.path.isdir(path):
        raise WorkdirExistsError(f"workdir {workdir} exists and is not a directory; pass a directory path")
    non_empty = existed and any(os.scandir(path))
    if non_empty and not (resume or overwrite):
        raise WorkdirExistsError(
            f"workdir {workdir} already exists and is not empty. Pass --resume to continue the run from its latest "
            "checkpoint, or --overwrite to replace it (the old run is deleted once the new one has a checkpoint)."
        )
    if jax.process_index() == 0:
        for left in sorted(glob.glob(_aside_glob(path))):
            logging.warning("an interrupted --overwrite left a previous run of %s at %s: move it back or delete it",
                            workdir, left)
    rd = RunDir(path=path, owned=not non_empty, existed=existed)
    if overwrite and non_empty:
        parent, name = os.path.split(path)
        rd.aside = os.path.join(parent, f".{name}{ASIDE_TAG}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        rd.owned = True
        if jax.process_index() == 0:
            os.rename(path, rd.aside)
            logging.warning("--overwrite: the old run is moved to %s and deleted once the new run has a checkpoint",
                            rd.aside)
    _sync("prepare_workdir")
    if jax.process_index() == 0:
        os.makedirs(path, exist_ok=True)
    _sync("prepare_workdir_mkdir")
    return rd
