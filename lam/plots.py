"""PNG plots and TensorBoard summaries of the LAM evaluation (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from lam import data as lam_data
from lam.config import context_frames


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def usage_plot(path: str, ids: np.ndarray, k: int) -> None:
    """Code usage per code position (one bar group per code)."""
    plt = _plt()
    c = ids.shape[1]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / c
    for j in range(c):
        frac = np.bincount(ids[:, j], minlength=k) / len(ids)
        ax.bar(np.arange(k) + j * width, frac, width, label=f"pos {j}")
    ax.set_xlabel("code id")
    ax.set_ylabel("fraction")
    ax.set_title("codebook usage on held-out clips")
    if c <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_plot(path: str, usage_jsonl: str) -> bool:
    """Perplexity, unique codes and PSNR (vs copy-last-frame) over training, from codebook_usage.jsonl."""
    if not os.path.exists(usage_jsonl):
        return False
    with open(usage_jsonl) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "perplexity" in r]
    if not rows:
        return False
    plt = _plt()
    s = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    a.plot(s, [r["perplexity"] for r in rows], label="batch perplexity")
    a.plot(s, [r["unique_codes"] for r in rows], label="unique codes")
    a.set_xlabel("step")
    a.legend(fontsize=7)
    a.set_title("codebook over training")
    b.plot(s, [r["psnr"] for r in rows], label="LAM")
    b.plot(s, [r["psnr_copy"] for r in rows], label="copy last frame")
    b.set_xlabel("step")
    b.set_ylabel("PSNR (dB)")
    b.legend(fontsize=7)
    b.set_ylim(bottom=max(0.0, min(r["psnr_copy"] for r in rows) - 10))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def probe_plot(path: str, m: dict[str, Any]) -> None:
    """Direction vs absolute-position probe accuracy and NMI, with majority baselines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    names = ["direction acc", "position acc", "direction NMI", "position NMI"]
    vals = [m["probe/direction_acc"], m["probe/position_acc"], m["probe/direction_nmi"], m["probe/position_nmi"]]
    ax.bar(names, vals, color=["tab:blue", "tab:orange", "tab:blue", "tab:orange"])
    ax.scatter([0, 1], [m["probe/direction_majority"], m["probe/position_majority"]], color="k", marker="_", s=400,
               label="majority class", zorder=3)
    ax.set_ylim(0, 1)
    ax.set_title("what the codes predict (held-out episodes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def psnr_plot(path: str, m: dict[str, Any]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["LAM", "copy last frame"], [m["recon/psnr"], m["recon/psnr_copy_last"]], color=["tab:green", "tab:gray"])
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("next-frame reconstruction")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def transfer_grid(path: str, cfg: ml_collections.ConfigDict, labeler: Any, table: lam_data.Table
                  ) -> np.ndarray | None:
    """Latent transfer: rows per pair = A's frames, B's frames, B's first frame rolled out with A's codes. None (no
    file) when no episode has even one transition at the LAM's frame offset."""
    off, n_steps, pairs = int(cfg.data.offset), int(cfg.eval.transfer_steps), int(cfg.eval.transfer_episodes)
    rng = np.random.default_rng(0)
    # short episodes (e.g. 10-step real clips): as many transfer steps as the longest episode allows
    n_steps = max(1, min(n_steps, (int(table.episode_len.max()) - 1) // max(off, 1)))
    long_eps = np.flatnonzero(table.episode_len > off * n_steps)
    if not len(long_eps):
        return None
    chosen = rng.choice(long_eps, size=2 * pairs, replace=len(long_eps) < 2 * pairs)
    dec = labeler.decode()
    # a decoder with a context frame reads the rollout's previous frame (at step 0 the episode's first frame itself,
    # i.e. zero previous motion, as the training clips are clamped at an episode's start)
    with_context = bool(context_frames(cfg))
    rows = []
    for p in range(pairs):
        a, b = chosen[2 * p], chosen[2 * p + 1]
        seq = lambda e: table.frames[table.episode_start[e] + np.arange(n_steps + 1) * off]
        fa, fb = seq(a), seq(b)
        ids_a = np.asarray(labeler(np.stack([fa[:-1], fa[1:]], 1)))[:, 0]  # [n_steps, C] codes of A's transitions
        cur = fb[0].astype(np.float32)[None, None] / 255.0
        roll = [cur[0, 0]]
        for t in range(n_steps):
            ctx = jnp.asarray(roll[max(t - 1, 0)][None, None]) if with_context else None
            cur = np.clip(np.asarray(dec(jnp.asarray(cur), jnp.asarray(ids_a[t][None, None]), ctx)), 0, 1)
            roll.append(cur[0, 0])
        rows += [fa.astype(np.float32) / 255.0, fb.astype(np.float32) / 255.0, np.stack(roll)]
    return _save_grid(path, rows, (1.2 * (n_steps + 1), 1.2 * len(rows)),
                      "per pair: A (source of codes) / B / B rolled out with A's codes")


def recon_grid(path: str, cfg: ml_collections.ConfigDict, labeler: Any, table: lam_data.Table) -> np.ndarray:
    """Rows: first frame, true next frame, reconstruction (8 random held-out clips)."""
    n_ctx = context_frames(cfg)  # leading decoder-only frames (not drawn)
    s = lam_data.ClipSampler(table, batch_size=8, clip_len=cfg.data.clip_len, offset=cfg.data.offset, seed=3,
                             context=n_ctx)
    b = next(s)
    full = b["clip"].astype(np.float32) / 255.0
    x, ctx = full[:, n_ctx:], (jnp.asarray(full[:, :n_ctx]) if n_ctx else None)
    ids = np.asarray(labeler(b["clip"][:, n_ctx:]))
    pred = np.clip(np.asarray(labeler.decode()(jnp.asarray(x[:, :-1]), jnp.asarray(ids), ctx)), 0, 1)
    return _save_grid(path, [x[:, 0], x[:, 1], pred[:, 0]], (10, 4),
                      "first frame / true next frame / reconstruction from first frame + codes")


def _save_grid(path: str, rows: list, figsize: tuple[float, float], title: str) -> np.ndarray:
    """Tile ``rows`` (each a sequence of [H, W, 3] images in [0, 1]) into one grid, save it as a PNG, return it."""
    plt = _plt()
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    fig, ax = plt.subplots(figsize=figsize)
    ax.imshow(grid)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return grid


def write_all(out_dir: str, workdir: str, cfg: ml_collections.ConfigDict, labeler: Any, table: lam_data.Table,
              test: dict[str, np.ndarray], m: dict[str, Any]) -> dict[str, str]:
    """Every PNG; returns name → path."""
    paths = {n: os.path.join(out_dir, f"{n}.png") for n in ("codebook_usage", "training", "probes", "psnr",
                                                              "reconstructions", "latent_transfer")}
    usage_plot(paths["codebook_usage"], test["ids"], int(cfg.model.codebook_size))
    if not training_plot(paths["training"], os.path.join(workdir, "codebook_usage.jsonl")):
        paths.pop("training")
    probe_plot(paths["probes"], m)
    psnr_plot(paths["psnr"], m)
    recon_grid(paths["reconstructions"], cfg, labeler, table)
    if transfer_grid(paths["latent_transfer"], cfg, labeler, table) is None:
        paths.pop("latent_transfer")
    return paths


def tensorboard(logdir: str, m: dict[str, Any], step: int) -> None:
    """Scalar metrics and the PNGs as image summaries (the shared event writer; no tensorboard package needed)."""
    import matplotlib.image as mpimg

    from latent_pretraining.training.metrics import EventWriter

    w = EventWriter(logdir)
    w.scalars(step, {f"eval/{k}": float(v) for k, v in m.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for name, p in m.get("plots", {}).items():
        img = (np.clip(mpimg.imread(p)[..., :3], 0, 1) * 255).astype(np.uint8)
        w.images(step, f"eval/{name}", img[None])
    w.close()
