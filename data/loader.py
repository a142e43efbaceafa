"""Batch iterator for trainers: typed batches (data/batch.py), optional global jax.Arrays, exact save/restore.

Usage (script/config layer; `data` itself never imports `configs`):
    it = make_iterator(get_mixture("demo"), PipelineConfig(data_root=DIR, window=vipra_window(),
                       global_batch_size=64, resolution=64, augment=AugmentConfig()),
                       sharding=NamedSharding(mesh, P(("dp", "fsdp"))))
    batch = next(it)                      # VLABatch (LAMBatch / PolicyBatch for other window kinds)
    state = it.get_state()                # small JSON dict -> checkpoint item "data"
    it.set_state(state)                   # after rebuilding with the same mixture/config
    assets["dataset_statistics"] = it.statistics

Resume design — state = (config fingerprint, batches consumed); restore = rebuild the pipeline + skip:
  * The stream is a sequence of *segments* of `segment_batches` batches; segment k is a fresh pipeline seeded with
    (seed, k, process). Restoring after n batches rebuilds segment n // S and skips (n % S) × local_batch samples
    *before* decoding (enumerate → skip → decode; augmentation is seeded by the sample index), so the next batches
    equal the uninterrupted run's bit for bit (requires deterministic=True).
  * State is a tiny JSON dict (no shuffle buffer): a tf.train.Checkpoint of the iterator would hold the whole
    buffer (≈ buffer × encoded sample size, GBs per host at OXE scale) in every checkpoint.
  * Cost: restore time ≈ pipeline build + refilling the shuffle buffer + reading/windowing up to S × local_batch
    encoded samples (no JPEG decode); bounded by the segment size, independent of how long the run has been going.
    RAM is unchanged (one pipeline). The price: every S batches the shuffle buffer restarts (file order reshuffled).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from data import tf_setup
from data.batch import BATCH_TYPES
from data.mixture import Mixture, PipelineConfig, build, check_host_slices, open_mixture
from data.rlds import DataError, find_corrupt_shard, tf_error_line

tf = tf_setup.tf
STATE_FORMAT = "latent_vla.data.v1"


def fingerprint(mixture: Mixture, cfg: PipelineConfig, process_index: int, process_count: int) -> str:
    """Hash of everything that shapes the stream (paths, stats location, prefetch and RAM budget excluded; the
    statistics' split only when it is not the read split)."""
    c = dataclasses.asdict(cfg)
    for k in ("data_root", "stats_dir", "prefetch", "ram_budget_gb"):
        c.pop(k)
    if c["stats_split"] in ("", c["split"]):  # the read split's own statistics: the stream of every earlier run
        c.pop("stats_split")
    blob = json.dumps({"mixture": dataclasses.asdict(mixture), "cfg": c, "proc": [process_index, process_count]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_fingerprint(mixture: Mixture, cfg: PipelineConfig) -> str:
    """What a run trains on, for `loop.run(data_fingerprint=...)` (refused on resume if changed): per member the
    resolved root, name, version, split, feature spec and registry conventions (data/episodes.py), plus the
    stream-shaping config (`fingerprint`, which leaves paths out) and the camera."""
    from data import episodes

    sources = [episodes.EpisodeSource(e.root or cfg.data_root, e.name, e.version or "", e.split or cfg.split,
                                      cfg.camera) for e in mixture.entries]
    return episodes.fingerprint(sources, stream=fingerprint(mixture, cfg, 0, 1))


class DataIterator:
    """Iterator of batches (LAMBatch / VLABatch / PolicyBatch by `cfg.window.kind`) with get_state/set_state."""

    def __init__(self, mixture: Mixture, cfg: PipelineConfig, *, sharding: Any = None,
                 process_index: int | None = None, process_count: int | None = None):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        self.mixture, self.cfg, self.sharding = mixture, cfg, sharding
        self.process_index, self.process_count = process_index, process_count
        self.handles = open_mixture(mixture, cfg)
        check_host_slices(self.handles, process_index, process_count)
        self.batch_type = BATCH_TYPES[cfg.window.kind]
        self._fingerprint = fingerprint(mixture, cfg, process_index, process_count)
        self._consumed = 0
        self._iter: Any = None

    @property
    def data_fingerprint(self) -> str:
        """`data_fingerprint(mixture, cfg)` of this iterator (for loop.run; independent of the process layout)."""
        return data_fingerprint(self.mixture, self.cfg)

    @property
    def statistics(self) -> dict[str, dict]:
        """Normalization stats per dataset name (store with checkpoint assets so policies can de-normalize)."""
        return {h.spec.name: h.stats for h in self.handles}

    @property
    def dataset_names(self) -> list[str]:
        """Names in `dataset_index` order."""
        return [h.spec.name for h in self.handles]

    def _start(self) -> None:
        seg_len = max(1, self.cfg.segment_batches)
        segment, offset = divmod(self._consumed, seg_len)
        local = self.cfg.global_batch_size // self.process_count
        ds = build(self.mixture, self.cfg, self.handles, segment=segment, skip_samples=offset * local,
                   process_index=self.process_index, process_count=self.process_count)
        ds = ds.take(seg_len - offset)
        self._iter = ds.as_numpy_iterator()

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._start()
        try:
            raw = self._pull()
        except StopIteration:  # end of a segment: continue with the next one
            self._start()
            try:
                raw = self._pull()
            except StopIteration:
                raise DataError(f"mixture {self.mixture.name!r}: the pipeline produced no batch (every dataset "
                                "empty on this host after filtering?)") from None
        self._consumed += 1
        return self.batch_type.from_dict(self._globalize(raw))

    def _pull(self) -> dict:
        try:
            return next(self._iter)
        except tf.errors.OpError as e:
            where = ""
            if isinstance(e, tf.errors.DataLossError):
                bad = [(h.spec.name, p) for h in self.handles if (p := find_corrupt_shard(h.opened))]
                where = f" in dataset {bad[0][0]!r}, shard {bad[0][1]}" if bad else ""
            raise DataError(f"mixture {self.mixture.name!r}: reading failed{where} ({type(e).__name__}): "
                            f"{tf_error_line(e)}") from None

    def _globalize(self, raw: dict) -> dict:
        out = {}
        for k, v in raw.items():
            if v.dtype.kind in ("S", "O", "U"):
                out[k] = v  # text stays host-local
            elif self.sharding is not None:
                import jax

                global_shape = (self.cfg.global_batch_size, *v.shape[1:])
                out[k] = jax.make_array_from_process_local_data(self.sharding, np.asarray(v), global_shape)
            else:
                out[k] = v
        return out

    def get_state(self) -> dict[str, Any]:
        """JSON-serializable state: restoring it into an identically configured iterator continues exactly."""
        return {"format": STATE_FORMAT, "fingerprint": self._fingerprint, "batches_consumed": self._consumed}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores `get_state()` output (dict or JSON string/bytes); the pipeline restarts lazily at that point."""
        if isinstance(state, (str, bytes)):
            state = json.loads(state)
        if state.get("format") != STATE_FORMAT:
            raise DataError(f"iterator state format {state.get('format')!r} is not {STATE_FORMAT!r}")
        if state.get("fingerprint") != self._fingerprint:
            raise DataError("iterator state was saved with a different mixture/pipeline config or process layout "
                            f"(fingerprint {state.get('fingerprint')} != {self._fingerprint})")
        self._consumed = int(state["batches_consumed"])
        self._iter = None


def make_iterator(mixture: Mixture, cfg: PipelineConfig, *, sharding: Any = None, process_index: int | None = None,
                  process_count: int | None = None) -> DataIterator:
    """Builds the trainer-facing iterator; `sharding` (e.g. NamedSharding(mesh, P('dp'))) yields global jax.Arrays."""
    return DataIterator(mixture, cfg, sharding=sharding, process_index=process_index, process_count=process_count)
