"""LAM evaluation: `python -m lam.evaluate --workdir=runs/lam_demo/lapa [--step=N] [--data_root=DIR]`.

Writes <workdir>/eval/{metrics.json, *.png, tensorboard/} (eval_on_<name>/ with --data_root: the probes fit and
tested on that root's episodes of the run's datasets, e.g. a fresh draw of the same world):
  codebook usage (histogram per code position on held-out clips) and perplexity over training (codebook_usage.jsonl);
  reconstruction PSNR next to the copy-last-frame baseline;
  probes (softmax regression on one-hot code ids, trained on train-split clips, tested on held-out val episodes;
  the same with one hidden layer of eval.mlp_probe_hidden units as probe/*_acc_mlp, 0 = off; the same linear
  probe on the standardized code vectors before quantization as probe/*_acc_z, which says whether a missing
  motion was lost by the encoder or by rounding to codes; and on the ids of per-slot k-means codebooks of K and 8·K
  codes fit to those vectors offline as probe/direction_acc_kmeans{K,8K}, which says whether another quantizer of
  the same vectors could keep what the model's rounding lost; for clips of several transitions, the same fitted
  probes scored on each transition's clips alone as probe/direction_acc{,_z}_transition{t}, which says whether a
  later transition's codes lost what the first one's keep):
  8-way direction of the true effector displacement over the transition (in pixels of the frames the LAM reads;
  transitions moving less than eval.min_motion px are left out) vs 8-way absolute effector position (4×2 quantile
  bins), with normalized mutual information between the joint code and each label; the truth is the demo world's
  effector or Meta-World's projected hand (lam/data.py EFFECTOR_TRUTH);
  latent transfer: episode A's codes applied to episode B's first frame, decoded autoregressively (rollout grid).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from core.errors import InvalidInput
from lam import data as lam_data
from lam.config import context_frames
from lam.label import Labeler, load_lam
from lam.quantizer import perplexity

PROBE_KEYS = ("probe/direction_acc", "probe/direction_majority", "probe/direction_nmi", "probe/position_acc",
              "probe/position_majority", "probe/position_nmi")


def direction_bins(disp: np.ndarray, bins: int = 8) -> np.ndarray:
    """8-way (or `bins`-way) direction of displacements float[N, 2] (x right, y down): 0 = +x, counter-clockwise."""
    ang = np.arctan2(-disp[:, 1], disp[:, 0])
    return np.mod(np.rint(ang / (2 * np.pi / bins)), bins).astype(np.int64)


def position_bins(pos: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """8 classes of absolute position float[N, 2]: 4 quantile bins in x × 2 in y (edges from the training set)."""
    return np.digitize(pos[:, 0], edges[0]) * 2 + np.digitize(pos[:, 1], edges[1])


def one_hot_codes(ids: np.ndarray, k: int) -> np.ndarray:
    """ids int[N, C] → float32[N, C·k]."""
    return np.eye(k, dtype=np.float32)[ids].reshape(len(ids), -1)


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 400, l2: float = 1e-3, hidden: int = 0,
              seed: int = 0) -> Any:
    """Full-batch probe x float[N, F] → y int[N]; returns predict(x) -> labels int[N].

    hidden = 0: softmax regression (the headline probe: what the codes say *linearly*, i.e. slot by slot).
    hidden > 0: one ReLU layer of that width first, which can also read combinations of slots (e.g. "the direction
    is in whichever slot holds the effector"); Adam at 0.01 instead of 0.1, L2 on both weight matrices (the
    evaluation gives it 1000 steps).
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    f = x.shape[1]
    if hidden:
        p0 = {"w1": jax.random.normal(k1, (f, hidden)) * np.sqrt(2.0 / f), "b1": jnp.zeros(hidden),
              "w": jax.random.normal(k2, (hidden, classes)) * np.sqrt(1.0 / hidden), "b": jnp.zeros(classes)}
    else:
        p0 = {"w": jnp.zeros((f, classes)), "b": jnp.zeros(classes)}
    opt = optax.adam(0.1 if not hidden else 0.01)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def logits(p, xs):
        h = jax.nn.relu(xs @ p["w1"] + p["b1"]) if "w1" in p else xs
        return h @ p["w"] + p["b"]

    def loss(p):
        reg = sum(jnp.sum(p[n] ** 2) for n in ("w", "w1") if n in p)
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, xj), yj).mean() + l2 * reg

    @jax.jit
    def run(p):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, opt.init(p)), None, length=steps)[0][0]

    p = run(p0)
    return lambda xs: np.asarray(jnp.argmax(logits(p, jnp.asarray(xs)), -1))


def kmeans_ids(train: np.ndarray, test: np.ndarray, slots: int, k: int, iters: int = 50,
               fit_max: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Per-slot k-means of vectors float[N, slots·D] → ids int[N_train, slots], int[N_test, slots].

    Lloyd's iterations from k random train vectors (an empty cluster restarts at a random vector), each slot's
    codebook fit on at most `fit_max` train vectors, on the vectors as they are (not standardized: a direction held
    in low-variance dimensions is lost here as rounding to a code would lose it); deterministic (seeded by slot)."""
    out_tr, out_te = np.zeros((len(train), slots), np.int64), np.zeros((len(test), slots), np.int64)
    a, b = train.reshape(len(train), slots, -1), test.reshape(len(test), slots, -1)
    nearest = lambda x, c: np.argmin(np.sum(x * x, 1)[:, None] - 2 * x @ c.T + np.sum(c * c, 1)[None], 1)
    for s in range(slots):
        rng = np.random.default_rng(s)
        x = a[rng.choice(len(a), min(len(a), fit_max), replace=False), s]
        c = x[rng.choice(len(x), k, replace=len(x) < k)].copy()
        for _ in range(iters):
            assign = nearest(x, c)
            for j in range(k):
                members = x[assign == j]
                c[j] = members.mean(0) if len(members) else x[rng.integers(len(x))]
        out_tr[:, s], out_te[:, s] = nearest(a[:, s], c), nearest(b[:, s], c)
    return out_tr, out_te


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information (arithmetic mean of entropies) between two label arrays int[N]."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    h = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))
    mi = np.sum(p[p > 0] * np.log(p[p > 0] / (pa[:, None] * pb[None, :])[p > 0]))
    denom = 0.5 * (h(pa) + h(pb))
    return float(mi / denom) if denom > 0 else 0.0


def collect(labeler: Labeler, table: lam_data.Table, cfg: ml_collections.ConfigDict, n_batches: int, seed: int,
            recon: bool) -> dict[str, np.ndarray]:
    """Codes, true displacement / position per transition, and PSNR of the model and of copying the last frame."""
    d = cfg.data
    bs = int(cfg.eval.batch_size)
    n_ctx = context_frames(cfg)  # leading decoder-only frames; the codes never see them
    sampler = lam_data.ClipSampler(table, batch_size=bs, clip_len=d.clip_len, offset=d.offset, seed=seed,
                                   weights=d.weights, context=n_ctx)
    dec = labeler.decode() if recon else None
    prepare = jax.jit(labeler.prepare, static_argnums=1)
    label = labeler.with_vectors()  # ids and the vectors they were rounded from, one encoder pass
    out: dict[str, list] = {k: [] for k in ("ids", "z", "disp", "pos", "psnr", "psnr_copy", "dataset",
                                            "transition")}
    for _ in range(n_batches):
        b = next(sampler)
        ids, z = map(np.asarray, label(b["clip"][:, n_ctx:]))  # [B, T-1, C], [B, T-1, C·Dq]
        out["z"].append(z.reshape(-1, z.shape[-1]))
        eff = b["effector"]  # of the clip's T frames, in pixels of the frames the LAM reads (lam/data.py)
        n = ids.shape[1]
        out["ids"].append(ids.reshape(-1, ids.shape[-1]))
        out["disp"].append((eff[:, 1:] - eff[:, :-1]).reshape(-1, 2))
        out["pos"].append(eff[:, :-1].reshape(-1, 2))
        out["dataset"].append(np.repeat(b["dataset"], n))
        out["transition"].append(np.tile(np.arange(n), len(ids)))  # row order of the reshapes above: clip-major
        if recon:  # in the frames the LAM reads (registered to frame 0 for a stabilized LAM, copy-last as well)
            full = np.asarray(prepare(jnp.asarray(b["clip"]), n_ctx))
            x, ctx = full[:, n_ctx:], (jnp.asarray(full[:, :n_ctx]) if n_ctx else None)
            pred = np.clip(np.asarray(dec(jnp.asarray(x[:, :-1]), jnp.asarray(ids), ctx)), 0, 1)
            mse = lambda a, c: np.mean((a - c) ** 2, axis=(2, 3, 4)).reshape(-1)
            out["psnr"].append(-10 * np.log10(np.maximum(mse(pred, x[:, 1:]), 1e-10)))
            out["psnr_copy"].append(-10 * np.log10(np.maximum(mse(x[:, :-1], x[:, 1:]), 1e-10)))
    return {k: np.concatenate(v) for k, v in out.items() if v}


def probes(train: dict, test: dict, cfg: ml_collections.ConfigDict) -> dict[str, float]:
    """Direction vs absolute-position probe accuracies (+ chance / majority baselines) and NMIs on held-out clips."""
    k, e = int(cfg.model.codebook_size), cfg.eval
    moving_tr = np.linalg.norm(train["disp"], axis=1) >= e.min_motion
    moving_te = np.linalg.norm(test["disp"], axis=1) >= e.min_motion
    xtr, xte = one_hot_codes(train["ids"], k), one_hot_codes(test["ids"], k)
    ytr, yte = direction_bins(train["disp"], e.direction_bins), direction_bins(test["disp"], e.direction_bins)
    pdir = fit_probe(xtr[moving_tr], ytr[moving_tr], e.direction_bins)
    edges = (np.quantile(train["pos"][:, 0], [0.25, 0.5, 0.75]), np.quantile(train["pos"][:, 1], [0.5]))
    ptr, pte = position_bins(train["pos"], edges), position_bins(test["pos"], edges)
    ppos = fit_probe(xtr, ptr, 8)
    joint = lambda ids: np.ravel_multi_index(ids.T, (k,) * ids.shape[1]) if ids.shape[1] <= 8 else \
        np.unique(ids, axis=0, return_inverse=True)[1].ravel()
    jte = joint(test["ids"])
    dir_acc = float(np.mean(pdir(xte[moving_te]) == yte[moving_te]))
    pos_acc = float(np.mean(ppos(xte) == pte))
    res = {
        "probe/direction_acc": dir_acc,
        "probe/direction_majority": float(np.max(np.bincount(yte[moving_te], minlength=8)) / max(moving_te.sum(), 1)),
        "probe/direction_nmi": nmi(jte[moving_te], yte[moving_te]),
        "probe/position_acc": pos_acc,
        "probe/position_majority": float(np.max(np.bincount(pte, minlength=8)) / len(pte)),
        "probe/position_nmi": nmi(jte, pte),
        "probe/test_clips": len(pte), "probe/test_moving_clips": int(moving_te.sum()),
    }
    hidden = int(e.mlp_probe_hidden)
    if hidden:  # the same two questions with a probe that can combine slots (fit_probe); linear stays the headline
        pdir_mlp = fit_probe(xtr[moving_tr], ytr[moving_tr], e.direction_bins, steps=1000, hidden=hidden)
        ppos_mlp = fit_probe(xtr, ptr, 8, steps=1000, hidden=hidden)
        res["probe/direction_acc_mlp"] = float(np.mean(pdir_mlp(xte[moving_te]) == yte[moving_te]))
        res["probe/position_acc_mlp"] = float(np.mean(ppos_mlp(xte) == pte))
    if "z" in train:  # before quantization: standardized with the train clips' statistics, the same linear probe
        mu, sd = train["z"].mean(0), train["z"].std(0) + 1e-6
        ztr, zte = (train["z"] - mu) / sd, (test["z"] - mu) / sd
        pz = fit_probe(ztr[moving_tr], ytr[moving_tr], e.direction_bins)
        res["probe/direction_acc_z"] = float(np.mean(pz(zte[moving_te]) == yte[moving_te]))
        res["probe/position_acc_z"] = float(np.mean(fit_probe(ztr, ptr, 8)(zte) == pte))
        slots = train["ids"].shape[1]
        for kk in (k, 8 * k):  # the model's codebook size, and eight times it, fit per slot to the raw vectors
            itr, ite = kmeans_ids(train["z"], test["z"], slots, kk)
            res[f"probe/direction_acc_kmeans{kk}"] = float(np.mean(fit_probe(
                one_hot_codes(itr, kk)[moving_tr], ytr[moving_tr], e.direction_bins)(one_hot_codes(ite, kk)[moving_te])
                == yte[moving_te]))
    if "transition" in test and len(np.unique(test["transition"])) > 1:  # each transition of a multi-frame clip
        for t in np.unique(test["transition"]):
            m = moving_te & (test["transition"] == t)
            if m.any():
                res[f"probe/direction_acc_transition{int(t)}"] = float(np.mean(pdir(xte[m]) == yte[m]))
                if "z" in train:
                    res[f"probe/direction_acc_z_transition{int(t)}"] = float(np.mean(pz(zte[m]) == yte[m]))
    for di in np.unique(test["dataset"]):
        m = moving_te & (test["dataset"] == di)
        if m.any():
            res[f"probe/direction_acc_dataset{int(di)}"] = float(np.mean(pdir(xte[m]) == yte[m]))
    return res


def evaluate(workdir: str, step: int | None = None, out_dir: str | None = None,
             data_root: str | None = None) -> dict[str, Any]:
    """Runs every evaluation of the module docstring; returns the metrics dict (also written as JSON).

    data_root: probe on another root with the run's datasets (e.g. fresh episodes of the same world, so that settings
    chosen by reading one set of val episodes are checked on another); written to eval_on_<root's name>/."""
    from lam import plots

    cfg, variables = load_lam(workdir, step)
    if data_root:
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f"--data_root {data_root!r}: no such directory (expected a data root holding "
                                    f"{', '.join(cfg.data.datasets)})")
        from data.mixture import parse_entry  # the pipeline's own reading of name[:version][@root][:weight]

        pinned = [e for e in cfg.data.datasets if parse_entry(e).root]
        if pinned:  # an entry's own root would win over data.root, so part of the probe would read the old episodes
            raise InvalidInput(f"--data_root {data_root!r}: dataset entries {pinned} name their own root, which "
                               "--data_root cannot replace; expected entries without '@root'")
        cfg.data.root = data_root
    name = "eval_on_" + os.path.basename(os.path.normpath(data_root)) if data_root else "eval"
    out_dir = out_dir or os.path.join(workdir, name)
    os.makedirs(out_dir, exist_ok=True)
    labeler = Labeler(cfg, variables)
    d = cfg.data
    tr, te = (lam_data.load_table(d.root, d.datasets, split, with_flow=False, cache_dir=d.cache_dir,
                                  resolution=int(cfg.model.image_size), camera=str(d.camera))
              for split in (d.train_split, d.eval_split))
    nb = int(cfg.eval.batches)
    train_c = collect(labeler, tr, cfg, nb, seed=1, recon=False)
    test_c = collect(labeler, te, cfg, nb, seed=2, recon=True)
    k = int(cfg.model.codebook_size)
    counts = np.bincount(test_c["ids"].ravel(), minlength=k)
    metrics: dict[str, Any] = {
        "checkpoint_step": int(cfg.checkpoint_step), "preset": cfg.preset,
        "codebook/perplexity": float(perplexity(jnp.asarray(counts, jnp.float32))),
        "codebook/codes_used": int(np.sum(counts > 0)), "codebook/size": k,
        "codebook/usage": (counts / counts.sum()).tolist(),
        "codebook/perplexity_per_slot": [float(perplexity(jnp.asarray(np.bincount(col, minlength=k), jnp.float32)))
                                         for col in test_c["ids"].T],
        "recon/psnr": float(np.mean(test_c["psnr"])), "recon/psnr_copy_last": float(np.mean(test_c["psnr_copy"])),
        "data_root": str(d.root),
    }
    ground_truth = tr.has_ground_truth and te.has_ground_truth
    if ground_truth:
        metrics.update(probes(train_c, test_c, cfg))
    else:  # real data: no true effector motion to probe against (reconstruction and codebook metrics still hold)
        metrics["probe/skipped"] = "no ground-truth effector positions in " + ", ".join(d.datasets)
    # without ground truth the probe plot has nothing to show: drawn from placeholders, then removed
    paths = plots.write_all(out_dir, workdir, cfg, labeler, te, test_c,
                            metrics if ground_truth else {**metrics, **dict.fromkeys(PROBE_KEYS, 0.0)})
    if not ground_truth:
        os.remove(paths.pop("probes"))
    metrics["plots"] = paths
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plots.tensorboard(os.path.join(out_dir, "tensorboard"), metrics, int(cfg.checkpoint_step))
    return metrics


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    m = evaluate(f.workdir, None if f.step < 0 else f.step, data_root=f.data_root or None)
    print(json.dumps({k: v for k, v in m.items() if k not in ("codebook/usage", "plots")}, indent=2))


if __name__ == "__main__":
    from absl import flags

    from core import cli

    flags.DEFINE_string("workdir", None, "LAM run directory (reads checkpoints/, writes eval/).", required=True)
    flags.DEFINE_integer("step", -1, "Checkpoint step (-1: latest).")
    flags.DEFINE_string("data_root", "", "Probe on this data root instead of the run's (same datasets; fresh episodes "
                        "of the same world; entries pinned to their own '@root' are refused): writes "
                        "eval_on_<its name>/.")
    cli.run_absl(main)
