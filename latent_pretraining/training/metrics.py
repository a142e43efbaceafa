"""Logging: TensorBoard event files, optional wandb, a tqdm bar (TTY) or plain lines (not a TTY), throughput, MFU.

Only process 0 writes. Per-step scalars are averaged over each logging interval. Throughput is measured on the host
over the interval (steps/s, and `items_per_step * steps/s` as samples/s or tokens/s); MFU is
`flops_per_step * steps/s / peak_flops` where `flops_per_step` is the *model* FLOPs of one global step (the caller's
formula, e.g. 6·N·tokens for a transformer) and `peak_flops` the whole mesh's peak (config value, else a table of
known accelerators; unknown on CPU, where MFU is left out).

Resumes: a run resumed from checkpoint N replays steps N+1.. that the stopped run may already have logged.
`MetricLogger` therefore drops events after its start step from the existing TensorBoard files (`prune_events`)
before writing, and `StepHistory` (a per-step JSONL history, e.g. for curves.json) drops its rows from the first
replayed step on, so both cover the whole run once.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

# Dense bf16 peak FLOP/s per device (vendor figures), matched against `device_kind` (lower case, substring).
PEAK_FLOPS = {
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
    "tpu v6": 918e12, "tpu v5p": 459e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v4": 275e12,
}


def peak_flops(per_device: float = 0.0) -> float:
    """Peak FLOP/s of all devices: `per_device` if given, else from `PEAK_FLOPS`, else 0 (unknown)."""
    if not per_device:
        kind = jax.devices()[0].device_kind.lower()
        per_device = next((v for k, v in PEAK_FLOPS.items() if k in kind), 0.0)
    return per_device * jax.device_count()


class EventWriter:
    """TensorBoard event file (TFRecord of `Event` protos) written with TensorFlow core only.

    tensorflow-cpu ships without the `tensorboard` package that `tf.summary.scalar` needs, so scalars and images are
    written as classic `Summary.Value`s (simple_value / PNG image), which TensorBoard reads.
    """

    def __init__(self, logdir: str):
        import socket

        from data.tf_setup import tf  # lazy (a few seconds); first, so TensorFlow loads quiet and off accelerators

        summary_pb2 = importlib.import_module("tensorflow.core.framework.summary_pb2")
        event_pb2 = importlib.import_module("tensorflow.core.util.event_pb2")
        os.makedirs(logdir, exist_ok=True)
        self._tf, self._summary_pb2, self._event_pb2 = tf, summary_pb2, event_pb2
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        while os.path.exists(self.path):  # a resume in the same second and process must not overwrite the file
            self.path += "_"
        self._writer = tf.io.TFRecordWriter(self.path)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())

    def _summary(self, step: int, values: list[Any]) -> None:
        summary = self._summary_pb2.Summary(value=values)
        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._writer.flush()

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        S = self._summary_pb2.Summary
        self._summary(step, [S.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def images(self, step: int, name: str, images: np.ndarray) -> None:
        """uint8 [N, H, W, C] images, stored as PNG."""
        S = self._summary_pb2.Summary
        values = []
        for i, im in enumerate(images):
            png = self._tf.io.encode_png(im).numpy()
            img = S.Image(height=im.shape[0], width=im.shape[1], colorspace=im.shape[2], encoded_image_string=png)
            values.append(S.Value(tag=f"{name}/{i}", image=img))
        self._summary(step, values)

    def close(self) -> None:
        self._writer.close()


def prune_events(logdir: str, after_step: int) -> int:
    """Removes events with `step > after_step` from the TensorBoard files in `logdir` (rewritten atomically).

    A file whose last record was cut short (a killed run) keeps its readable records. Returns the events removed.
    """
    paths = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    if not paths:
        return 0
    from data.tf_setup import tf  # lazy; first, so TensorFlow loads quiet

    event_pb2 = importlib.import_module("tensorflow.core.util.event_pb2")

    removed = 0
    for path in paths:
        keep, drop = [], 0
        try:
            for raw in tf.data.TFRecordDataset(path):
                record = raw.numpy()
                if event_pb2.Event.FromString(record).step > after_step:
                    drop += 1
                else:
                    keep.append(record)
        except tf.errors.DataLossError:  # truncated last record: a run killed mid-write
            drop += 1
        if not drop:
            continue
        removed += drop
        if not any(event_pb2.Event.FromString(r).HasField("summary") for r in keep):
            os.remove(path)
            continue
        tmp = path + ".tmp"
        with tf.io.TFRecordWriter(tmp) as w:
            for record in keep:
                w.write(record)
        os.replace(tmp, path)
    if removed:
        logging.info("TensorBoard: dropped %d events after step %d (replayed after the resume)", removed, after_step)
    return removed


class StepHistory:
    """A per-step history of scalar metrics in a JSONL file that survives resumes; use it as a loop hook.

    On its first call (step s, the first step this process runs) rows with step >= s are dropped: they were written
    by a run that stopped after its last checkpoint and are replayed now. Only process 0 writes; `read()` reads the
    whole run's history back (one row per step, in step order). It reads only each step's metrics, so the loop may
    call it late (`deferred`: at the next log / checkpoint step) without fetching metrics every step.
    """

    deferred = True

    def __init__(self, path: str, select: Callable[[str], bool] | None = None):
        self.path = path
        self.select = select or (lambda key: True)
        self._started = False

    def __call__(self, step: int, state: Any, metrics: Mapping[str, Any], logger: Any) -> None:
        if jax.process_index() != 0:
            return
        if not self._started:
            self._started = True
            kept = [r for r in self.read() if r["step"] < step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)
        row = {"step": int(step), **{k: float(np.mean(v)) for k, v in metrics.items() if self.select(k)}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list[dict[str, float]]:
        """Rows of the file (a later row for a step replaces an earlier one; a cut-off last line is ignored)."""
        if not os.path.exists(self.path):
            return []
        by_step: dict[int, dict[str, float]] = {}
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    by_step[int(row["step"])] = row
                except (ValueError, KeyError, TypeError):
                    continue
        return [by_step[s] for s in sorted(by_step)]


class MetricLogger:
    """Collects per-step metrics and writes interval means to TensorBoard / wandb / tqdm / plain lines."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int = 0,
        log_every: int = 10,
        items_per_step: float = 0.0,
        item_name: str = "samples",
        flops_per_step: float = 0.0,
        peak_flops_per_device: float = 0.0,
        tensorboard: bool = True,
        wandb_project: str = "",
        config: Mapping[str, Any] | None = None,
        progress: bool | None = None,
        main_metrics: tuple[str, ...] = ("loss",),
    ):
        self.is_main = jax.process_index() == 0
        self.log_every = max(int(log_every), 1)
        self.items_per_step, self.item_name = items_per_step, item_name
        self.flops_per_step, self.peak = flops_per_step, peak_flops(peak_flops_per_device)
        self.main_metrics = main_metrics
        self._sums: dict[str, float] = {}
        self._count = 0
        self._t0, self._step0 = time.perf_counter(), start_step
        self.last: dict[str, float] = {}
        self._tb = self._wandb = self._bar = None
        if not self.is_main:
            return
        if tensorboard:
            prune_events(os.path.join(workdir, "tensorboard"), start_step)  # replayed steps are logged again
            self._tb = EventWriter(os.path.join(workdir, "tensorboard"))
        if wandb_project:
            import wandb  # optional dependency

            run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]  # resumed runs continue it
            self._wandb = wandb.init(project=wandb_project, dir=workdir, config=dict(config or {}), id=run_id,
                                     resume="allow")
        if progress is None:
            progress = sys.stdout.isatty()
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Adds one step's host metrics (`step` = the step count after the update); logs every `log_every`."""
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(np.mean(v))
        self._count += 1
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
        if step % self.log_every == 0:
            self.flush(step)

    def flush(self, step: int) -> dict[str, float]:
        """Writes the interval means (+ throughput) at `step` and resets the interval."""
        if not self._count:
            return self.last
        now = time.perf_counter()
        dt = max(now - self._t0, 1e-9)
        out = {k: v / self._count for k, v in self._sums.items()}
        steps_per_sec = (step - self._step0) / dt
        out["perf/steps_per_sec"] = steps_per_sec
        if self.items_per_step:
            out[f"perf/{self.item_name}_per_sec"] = self.items_per_step * steps_per_sec
        if self.flops_per_step:
            out["perf/model_tflops_per_sec"] = self.flops_per_step * steps_per_sec / 1e12
            if self.peak:
                out["perf/mfu"] = self.flops_per_step * steps_per_sec / self.peak
        self.last = out
        self._sums, self._count, self._t0, self._step0 = {}, 0, now, step
        if self.is_main:
            self.write_scalars(step, out)
            self._print(step, out)
        return out

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Scalars to TensorBoard / wandb (process 0 only); e.g. eval results from a hook."""
        if not self.is_main:
            return
        if self._tb is not None:
            self._tb.scalars(step, scalars)
        if self._wandb is not None:
            self._wandb.log(dict(scalars), step=step)

    def write_images(self, step: int, name: str, images: np.ndarray) -> None:
        """uint8 or [0, 1] float images [N, H, W, C] to TensorBoard / wandb (process 0 only)."""
        if not self.is_main:
            return
        images = np.asarray(images)
        if images.dtype != np.uint8:
            images = (np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        if self._tb is not None:
            self._tb.images(step, name, images)
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: [wandb.Image(im) for im in images]}, step=step)

    def _print(self, step: int, out: Mapping[str, float]) -> None:
        shown = {k: out[k] for k in self.main_metrics if k in out}
        rate = out["perf/steps_per_sec"]
        if self._bar is not None:
            post = {k: f"{v:.4g}" for k, v in shown.items()}
            if self.items_per_step:
                post[f"{self.item_name}/s"] = f"{out[f'perf/{self.item_name}_per_sec']:.4g}"
            self._bar.set_postfix(post, refresh=False)
            return
        parts = [f"step {step}"] + [f"{k}={v:.5g}" for k, v in shown.items()] + [f"{rate:.3g} step/s"]
        if self.items_per_step:
            parts.append(f"{out[f'perf/{self.item_name}_per_sec']:.4g} {self.item_name}/s")
        if "perf/mfu" in out:
            parts.append(f"mfu={out['perf/mfu']:.1%}")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
