"""The steps every RLDS dataset writer of this project shares (the demo world, Meta-World): build the TFDS dataset in a
hidden ``<out>/.partial-*`` directory, then write ``generation.json`` and rename it into place, so a reader never
sees a half-written dataset and an interrupted run leaves the previous copy untouched.

    with partial_dir(out, name) as partial:
        built = store_splits(partial, name, version, features, {"train": eps, "val": val}, totals={...}, ...)
        final = commit(built, out, name, version, {"summary": ...})
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any


@contextlib.contextmanager
def partial_dir(out: str, name: str) -> Iterator[str]:
    """A fresh hidden build directory under ``out``, removed on exit whether or not the build was committed."""
    partial = tempfile.mkdtemp(prefix=f".partial-{name}-", dir=out)
    try:
        yield partial
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def check_can_write(out: str, names: Iterable[str], version: str, overwrite: bool) -> None:
    """Refuses (FileExistsError, one line) before anything is generated if a target exists without ``overwrite``."""
    for name in names:
        final = os.path.join(out, name, version)
        if os.path.exists(final) and not overwrite:
            raise FileExistsError(f"{final} already exists: pass --overwrite to replace it")


def num_shards(requested: int, episodes: int, val_episodes: int) -> int:
    """TFDS uses one shard count for every split and refuses more shards than examples."""
    return min(requested, episodes, val_episodes or episodes)


def store_splits(partial: str, name: str, version: str, features: Any, splits: Mapping[str, Iterable[Any]], *,
                 totals: Mapping[str, int], description: str, shards: int, progress: bool) -> str:
    """Writes ``splits`` (split -> iterable of (key, example)) as a TFDS dataset under ``partial``; returns its
    directory. ``progress``: one tqdm bar per split (``totals`` examples); without it TFDS's own bars are off too."""
    from data.tf_setup import tfds  # quiet environment first (core/quiet.py)

    if progress:
        from tqdm import tqdm

        splits = {k: tqdm(v, total=totals.get(k), desc=f"{name} {k}", unit="ep", leave=False)
                  for k, v in splits.items()}
    else:
        tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints the hidden .partial path as if it were final
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name, version=version, features=features, split_datasets=dict(splits), data_dir=partial,
            description=description, download_config=tfds.download.DownloadConfig(num_shards=shards),
            disable_shuffling=True)
    return os.path.join(partial, name, version)


def dir_bytes(path: str) -> int:
    """Total size of the files directly in ``path`` (a TFDS version directory is flat)."""
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def commit(built: str, out: str, name: str, version: str, generation: Mapping[str, Any]) -> str:
    """Writes ``generation.json`` into ``built`` and renames it to ``<out>/<name>/<version>`` (replacing an existing
    copy only now, when the new one is complete); returns the final path."""
    with open(os.path.join(built, "generation.json"), "w") as f:
        json.dump(dict(generation), f, indent=1)
    final = os.path.join(out, name, version)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if os.path.exists(final):  # only with overwrite (checked up front): swap the complete new copy in
        shutil.rmtree(final)
    os.replace(built, final)
    return final
