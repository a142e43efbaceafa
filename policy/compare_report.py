"""The statistics and the report of the demo-world comparison (``scripts/compare.py`` runs the policies; this module
only reads their evaluations' per-episode records).

One evaluation = one policy: a (recipe, pretraining variant, N demos, fine-tuning seed) fine-tune, run by
``policy.evaluate`` on the same E world seeds as every other policy (paired). ``Run`` holds its records. A variant
may have several pretraining runs (replicates: the same data and recipe pretrained again with another seed); each
fine-tuning seed then runs from each of them, and ``Run.pretrain`` says which (0 = the first).

- ``pooled(runs, family)``: the runs of one (recipe, variant, N) over their S fine-tuning seeds. Success: k of the
  S × E episodes with a Wilson 95 % interval. Progress: the mean with a bootstrap 95 % interval that resamples
  *world seeds*, each world seed's progress first averaged over the S policies (so one world counts once however many
  seeds ran on it). Also the per-seed figures (the spread the seeds alone cause).
- ``paired(a, b, field, family)``: per world seed, a's mean over its fine-tuning seeds minus b's; the mean of those
  differences with a bootstrap 95 % interval over world seeds, and one that also resamples each side's pretraining
  runs and, within them, its fine-tuning seeds (``two_level_ci``: a gap that one lucky fine-tuning or pretraining run
  makes is not read as the recipe's). Refuses
  (``PairingError``, one line) runs that did not play exactly the same world seeds (and tasks) in the same world
  config: an unpaired difference is not computed.
- ``write_report(out, runs, ...)``: OUT/report.md (tables overall and per task family, paired differences vs the
  scratch baseline, the human-video ablation, pretrained runs, cost, versions, commands), OUT/comparison.md (the overall
  table, which scripts/report.py shows) and the plots.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
from collections.abc import Sequence

import numpy as np

from core import machine
from core.errors import UserError
from data.demo import tasks as tasks_lib
from policy import compare_cost
from policy.eval_report import bootstrap_ci, plot_vs_demos, wilson_interval

BASELINE = "scratch"  # paired differences are against this recipe (same N, same world seeds)
# a pretrained recipe whose fine-tuning layout differs from BASELINE's (the ViPRA layout) -> that layout from a random
# init: their difference is the pretraining's effect alone, the one against BASELINE mixes in the layout's
LAYOUT_BASELINE = {"lapa": "lapa_scratch"}
ROLLOUTS_PER_POLICY = 2


class PairingError(UserError):
    """Two evaluations that should be paired did not run the same world seeds (or world config)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One evaluated policy. ``records``: ``policy.evaluate``'s per-episode dicts (world ``seed``, ``family``,
    ``success``, ``progress``); ``world``: the world config it ran in (JSON text; pairing needs equal ones)."""

    recipe: str
    variant: str  # pretraining variant ("" = none, or the only one)
    demos: int
    seed: int  # fine-tuning seed
    records: tuple[dict, ...]
    world: str = ""
    name: str = ""
    gifs: tuple[str, ...] = ()
    pretrain: int = 0  # which of the variant's pretraining runs it was fine-tuned from (0: the first, or the only)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.recipe, self.variant, self.demos

    @property
    def unit(self) -> str:
        """The fine-tuning seed, prefixed with its pretraining run when that is not the first ("p1:0")."""
        return f"p{self.pretrain}:{self.seed}" if self.pretrain else str(self.seed)

    @classmethod
    def from_result(cls, result: dict, *, recipe: str, variant: str, demos: int, seed: int, name: str = "",
                    pretrain: int = 0) -> Run:
        """From ``policy.evaluate.evaluate``'s (or its --out JSON's) result dict."""
        world = json.dumps(result.get("settings", {}).get("world_config", {}), sort_keys=True)
        return cls(recipe, variant, int(demos), int(seed), tuple(result["records"]), world, name,
                   tuple(result.get("gifs", ())), int(pretrain))


def label(recipe: str, variant: str) -> str:
    return f"{recipe} ({variant})" if variant else recipe


# ------------------------------------------------------------------------------------------------- statistics
def _episodes(run: Run, family: str | None) -> dict[int, dict]:
    return {int(r["seed"]): r for r in run.records if family is None or r["family"] == family}


def _matrix(runs: Sequence[Run], field: str, family: str | None) -> tuple[list[int], np.ndarray]:
    """(sorted world seeds, values f64[S, W]) of ``runs`` (the fine-tuning seeds of one policy, or any runs that must
    be paired); raises PairingError unless every run played the same world seeds with the same tasks and world."""
    if not runs:
        raise ValueError("no runs")
    first = _episodes(runs[0], family)
    for r in runs[1:]:
        eps = _episodes(r, family)
        if r.world != runs[0].world:
            raise PairingError(f"{r.name or label(r.recipe, r.variant)} ran in another world config than "
                               f"{runs[0].name or label(runs[0].recipe, runs[0].variant)}: evaluate every policy "
                               "with the same --data")
        if eps.keys() != first.keys() or any(eps[s]["family"] != first[s]["family"] for s in eps):
            extra, missing = sorted(eps.keys() - first.keys()), sorted(first.keys() - eps.keys())
            raise PairingError(
                f"{r.name or label(r.recipe, r.variant)} and {runs[0].name or label(runs[0].recipe, runs[0].variant)}"
                f" played different world seeds (only in the first: {extra[:3]}, only in the second: {missing[:3]}"
                f"{', or other tasks' if not (extra or missing) else ''}): pair only evaluations with the same "
                "--seed and --episodes")
    worlds = sorted(first)
    return worlds, np.array([[float(_episodes(r, family)[w][field]) for w in worlds] for r in runs], np.float64)


def pooled(runs: Sequence[Run], family: str | None = None) -> dict:
    """The figures of one (recipe, variant, N) over its fine-tuning seeds (see the module docstring); {} when the
    family has no episodes."""
    worlds, success = _matrix(runs, "success", family)
    if not worlds:
        return {}
    _, progress = _matrix(runs, "progress", family)
    k, n = int(success.sum()), success.size
    return {"episodes": n, "worlds": len(worlds), "successes": k, "success_rate": k / n,
            "ci95": list(wilson_interval(k, n)), "progress": float(progress.mean()),
            "progress_ci95": list(bootstrap_ci(progress.mean(axis=0))),
            "units": [r.unit for r in runs],
            "seed_success": success.mean(axis=1).tolist(), "seed_progress": progress.mean(axis=1).tolist()}


def paired(a: Sequence[Run], b: Sequence[Run], field: str, family: str | None = None) -> dict:
    """Mean over shared world seeds of (a − b), each side first averaged over its runs (fine-tuning seeds, of every
    pretraining run), with a bootstrap 95 % interval over world seeds ("ci95": the evaluation's noise, the runs held
    fixed) and, when both sides have at least two runs, one that resamples those too ("ci95_seeds": pretraining runs,
    then fine-tuning seeds within each, see `two_level_ci`; else None). field: "success" (as 0/1) or "progress"."""
    if not a or not b:
        raise ValueError("paired() needs runs on both sides")
    worlds, m = _matrix([*a, *b], field, family)  # every run of both sides: same world seeds, tasks and world
    d = m[:len(a)].mean(axis=0) - m[len(a):].mean(axis=0)
    both = len(a) >= 2 and len(b) >= 2 and d.size
    return {"mean": float(d.mean()) if d.size else float("nan"), "ci95": list(bootstrap_ci(d)), "worlds": len(worlds),
            "ci95_seeds": list(two_level_ci(m[:len(a)], m[len(a):], pretrain_a=[r.pretrain for r in a],
                                            pretrain_b=[r.pretrain for r in b])) if both else None}


def two_level_ci(a: np.ndarray, b: np.ndarray, *, pretrain_a: Sequence[int] | None = None,
                 pretrain_b: Sequence[int] | None = None, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) − mean(b) for a f64[Sa, W], b f64[Sb, W] (runs × the same W world
    seeds): each resample draws W world seeds (the same draw for both sides: paired) and, per side, its runs with
    replacement, so the spread between fine-tuning runs counts as well as the evaluation's. pretrain_a / _b (one
    int per row; default all 0) name each run's pretraining run: with several, a resample first draws that many
    pretraining runs with replacement, then within each drawn one its fine-tuning seeds, and weighs the drawn
    pretraining runs equally (a hierarchical bootstrap: runs that share a pretraining are not independent). With
    few seeds or pretraining runs per side (2–3) that part is itself a crude estimate (too narrow on average)."""
    rng = np.random.default_rng(seed)
    w = a.shape[1]
    cw = np.stack([np.bincount(i, minlength=w) for i in rng.integers(0, w, (resamples, w))]).astype(np.float64)

    def side(m: np.ndarray, pretrain: Sequence[int] | None) -> np.ndarray:
        """Each resample's mean over its drawn pretraining runs, seeds and worlds, f64[R]."""
        unit = m @ cw.T / w  # f64[S, R]: every run's mean over each resample's drawn world seeds
        labels = np.zeros(len(m), int) if pretrain is None else np.asarray(pretrain)
        groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
        k = len(groups)
        # one pretraining run: no draw, so the single-run interval keeps its random stream (earlier reports reproduce)
        pick = rng.integers(0, k, (resamples, k)) if k > 1 else np.zeros((resamples, 1), int)
        total = np.zeros(resamples)
        for j in range(k):  # slot j of the k drawn pretraining runs: its own fresh draw of seeds
            means = np.empty((resamples, k))
            for g, idx in enumerate(groups):
                n = len(idx)
                cs = np.stack([np.bincount(i, minlength=n) for i in rng.integers(0, n, (resamples, n))])
                means[:, g] = np.einsum("rs,sr->r", cs.astype(np.float64), unit[idx]) / n
            total += means[np.arange(resamples), pick[:, j]]
        return total / k

    diffs = side(a, pretrain_a) - side(b, pretrain_b)
    alpha = (1.0 - level) / 2
    return float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))


def group(runs: Sequence[Run], recipes: Sequence[str], variants: Sequence[str]) -> dict[tuple[str, str, int], list]:
    """Runs by (recipe, variant, N), ordered by the given recipe and variant order, then N; runs sorted by
    (pretraining run, fine-tuning seed)."""
    out: dict[tuple[str, str, int], list[Run]] = {}
    rank = lambda r: (list(recipes).index(r.recipe) if r.recipe in recipes else len(recipes),
                      list(variants).index(r.variant) if r.variant in variants else -1, r.demos, r.pretrain, r.seed)
    for r in sorted(runs, key=rank):
        out.setdefault(r.key, []).append(r)
    return out


def families(runs: Sequence[Run]) -> list[str]:
    """The task families the runs played, in the ladder order of data/demo/tasks.py."""
    seen = {rec["family"] for r in runs for rec in r.records}
    return [f for f in tasks_lib.TASK_FAMILIES if f in seen] + sorted(seen - set(tasks_lib.TASK_FAMILIES))


# ------------------------------------------------------------------------------------------------- formatting
def _rate(p: dict) -> str:
    lo, hi = p["ci95"]
    return f"{100 * p['success_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({p['successes']}/{p['episodes']})"


def _prog(p: dict) -> str:
    lo, hi = p["progress_ci95"]
    return f"{p['progress']:.3f} [{lo:.3f}, {hi:.3f}]"


def _diff(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    lo, hi = d["ci95"]
    return f"{scale * d['mean']:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def _seeds_ci(d: dict) -> str:
    if d.get("ci95_seeds") is None:
        return "—"
    lo, hi = d["ci95_seeds"]
    return f"[{lo:+.3f}, {hi:+.3f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def scope_tables(groups: dict, family: str | None, variants: Sequence[str]) -> list[str]:
    """Markdown for one scope (all episodes, or one task family): pooled figures, paired differences vs the
    baseline at the same N, and the pretraining ablation (each variant minus every later one, in the given order:
    with `robot+human`, `robot400`, `robot` that is human vs more robot video, human video added, more robot video)."""
    rows = []
    for (recipe, variant, n), runs in groups.items():
        p = pooled(runs, family)
        if p:
            rows.append([recipe, variant or "—", str(n), ",".join(p["units"]), _rate(p), _prog(p),
                         " / ".join(f"{100 * x:.0f}" for x in p["seed_success"]),
                         " / ".join(f"{x:.3f}" for x in p["seed_progress"])])
    out = ["Pooled over fine-tuning seeds:", ""]
    out += _table(["recipe", "pretraining", "N", "seeds", "success % [Wilson 95 %] (k/n)",
                   "progress [bootstrap 95 %]", "success % per seed", "progress per seed"], rows)
    diffs = []
    for (recipe, variant, n), runs in groups.items():
        base = groups.get((BASELINE, "", n))
        if recipe == BASELINE or base is None or not pooled(runs, family):
            continue
        s, g = paired(runs, base, "success", family), paired(runs, base, "progress", family)
        diffs.append([recipe, variant or "—", str(n), str(s["worlds"]), _diff(s, 100, 1), _diff(g), _seeds_ci(g)])
    if diffs:
        out += [f"Paired differences vs {BASELINE} at the same N (per world seed, each side's mean over its "
                "fine-tuning seeds; bootstrap 95 % over world seeds; the last column resamples each side's runs "
                "as well, pretraining runs first where a variant has several, then fine-tuning seeds; shown when "
                "both sides have at least two runs):", ""]
        out += _table(["recipe", "pretraining", "N", "world seeds", "Δ success (points)", "Δ progress",
                       "Δ progress [worlds + seeds]"], diffs)
    within = []
    for (recipe, variant, n), runs in groups.items():
        base = groups.get((LAYOUT_BASELINE[recipe], "", n)) if recipe in LAYOUT_BASELINE else None
        if base is None or not pooled(runs, family) or not pooled(base, family):
            continue
        s, g = paired(runs, base, "success", family), paired(runs, base, "progress", family)
        within.append([f"{recipe} − {LAYOUT_BASELINE[recipe]}", variant or "—", str(n), str(s["worlds"]),
                       _diff(s, 100, 1), _diff(g), _seeds_ci(g)])
    if within:
        out += ["Pretraining within its fine-tuning layout (the pretrained recipe minus the same layout from a "
                "random init, same N, paired on world seeds; the last column as above):", ""]
        out += _table(["difference", "pretraining", "N", "world seeds", "Δ success (points)", "Δ progress",
                       "Δ progress [worlds + seeds]"], within)
    sens = sensitivity_rows(groups, family)
    if sens:
        out += ["Sensitivity to the number of demos (largest N − smallest N, same recipe, paired on world seeds; "
                "\"separated\": the two pooled 95 % intervals do not overlap):", ""]
        out += _table(["recipe", "pretraining", "N", "Δ success (points)", "Δ progress", "success separated",
                       "progress separated"], sens)
    abl = []
    for (recipe, variant, n), runs in groups.items():
        if variant not in variants or not pooled(runs, family):
            continue
        for other in variants[list(variants).index(variant) + 1:]:  # every later variant: each pair once
            if (recipe, other, n) in groups:
                s = paired(runs, groups[(recipe, other, n)], "success", family)
                g = paired(runs, groups[(recipe, other, n)], "progress", family)
                abl.append([recipe, f"{variant} − {other}", str(n), str(s["worlds"]), _diff(s, 100, 1), _diff(g),
                            _seeds_ci(g)])
    if abl:
        single = not any(r.pretrain for (_, v, _), runs in groups.items() if v in variants for r in runs)
        out += ["Pretraining ablation (same recipe and N, paired on world seeds; the last column as above"
                + ("; one pretraining run per variant, so no interval here samples pretraining's own spread: "
                   "name several runs per variant, --vla NAME=DIR1,DIR2, for that" if single else "") + "):", ""]
        out += _table(["recipe", "difference", "N", "world seeds", "Δ success (points)", "Δ progress",
                       "Δ progress [worlds + seeds]"], abl)
    return out


def sensitivity_rows(groups: dict, family: str | None) -> list[list[str]]:
    """Per (recipe, variant) run at two or more N: the paired difference largest N − smallest N and whether the
    pooled intervals of the two ends are disjoint (issue #20's criterion: more demos must be measurably better for
    the benchmark to be able to rank recipes)."""
    rows = []
    by_recipe: dict[tuple[str, str], list[int]] = {}
    for recipe, variant, n in groups:
        by_recipe.setdefault((recipe, variant), []).append(n)
    for (recipe, variant), ns in by_recipe.items():
        lo_n, hi_n = min(ns), max(ns)
        lo, hi = groups[(recipe, variant, lo_n)], groups[(recipe, variant, hi_n)]
        p_lo, p_hi = pooled(lo, family), pooled(hi, family)
        if lo_n == hi_n or not p_lo or not p_hi:
            continue
        s, g = paired(hi, lo, "success", family), paired(hi, lo, "progress", family)
        apart = ["yes" if p_hi[k][0] > p_lo[k][1] or p_lo[k][0] > p_hi[k][1] else "no"
                 for k in ("ci95", "progress_ci95")]
        rows.append([recipe, variant or "—", f"{hi_n} − {lo_n}", _diff(s, 100, 1), _diff(g), *apart])
    return rows


# ------------------------------------------------------------------------------------------------------ plots
def plot_families(groups: dict, fams: Sequence[str], demos: int, path: str) -> str:
    """Per-family success and progress bars (95 % intervals) of every policy at ``demos`` demos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = [(label(r, v), runs) for (r, v, n), runs in groups.items() if n == demos]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(fams) * 2), 4.2), sharey=True)
    width = 0.8 / max(1, len(at))
    for ax, (value, ci, title) in zip(axes, (("success_rate", "ci95", "success (Wilson 95 %)"),
                                             ("progress", "progress_ci95", "progress (bootstrap 95 %)")), strict=True):
        for j, (name, runs) in enumerate(at):
            ps = [pooled(runs, f) for f in fams]
            y = np.array([p.get(value, np.nan) for p in ps])
            err = np.array([[max(0.0, p[value] - p[ci][0]) if p else 0.0 for p in ps],
                            [max(0.0, p[ci][1] - p[value]) if p else 0.0 for p in ps]])
            ax.bar(np.arange(len(fams)) + (j - (len(at) - 1) / 2) * width, y, width, yerr=err, capsize=2, label=name)
        ax.set_xticks(np.arange(len(fams)))
        ax.set_xticklabels(fams, rotation=20, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{title}, {demos} demos", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ provenance
def _latest_assets(run_dir: str) -> str | None:
    """<run>/checkpoints/<newest step>/assets (where the trainers store config.json, frozen.json), or None."""
    ck = os.path.join(run_dir, "checkpoints")
    steps = sorted((int(s) for s in os.listdir(ck) if s.isdigit()), reverse=True) if os.path.isdir(ck) else []
    for s in steps:
        if os.path.isfile(os.path.join(ck, str(s), "assets", "config.json")):
            return os.path.join(ck, str(s), "assets")
    return None


def read_json_object(path: str) -> dict:
    """The JSON object in ``path``; {} when the file is missing, unreadable or not an object (a killed run's)."""
    try:
        with open(path) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def data_roots(root: str | None, datasets: Sequence[str]) -> list[str]:
    """The data roots a run read: its data.root and the '@root' of its dataset entries (data/mixture.py
    ENTRY_SYNTAX: name[:version][@root][:weight or =weight])."""
    roots = [root] if root else []
    for entry in datasets:
        r = str(entry).partition("=")[0].partition("@")[2]
        head, colon, tail = r.rpartition(":")
        roots.append(head if colon and tail.replace(".", "", 1).isdigit() else r)
    return [r for r in dict.fromkeys(roots) if r]


def pretrained_info(run_dir: str) -> dict:
    """What a pretrained VideoLLaMA run was: its preset and datasets (checkpoint asset config.json) and its frozen
    LAM (asset frozen.json: preset, codes, offset, workdir; the LAM run's own config.json: datasets, encoder)."""
    assets = _latest_assets(run_dir)
    if assets is None:
        return {"run": run_dir, "missing": True}
    cfg = read_json_object(os.path.join(assets, "config.json"))
    frozen = read_json_object(os.path.join(assets, "frozen.json"))
    lam = frozen.get("lam", {})
    info = {"run": run_dir, "preset": f"{cfg.get('recipe', '?')}:{cfg.get('preset', '?')}",
            "datasets": list(cfg.get("data", {}).get("datasets", [])), "steps": cfg.get("train", {}).get("total_steps"),
            "data_roots": data_roots(cfg.get("data", {}).get("root"), cfg.get("data", {}).get("datasets", [])),
            "lam_preset": lam.get("preset") or "—",
            "lam_codes": f"{lam.get('codes_per_step', '?')} × {lam.get('codebook_size', '?')}" if lam else "—",
            "lam_offset": lam.get("offset"), "lam_workdir": lam.get("workdir")}
    lam_assets = _latest_assets(lam["workdir"]) if lam.get("workdir") else None
    if lam_assets:
        lc = read_json_object(os.path.join(lam_assets, "config.json"))
        enc, model = lc.get("model", {}).get("encoder", {}), lc.get("model", {})
        info["lam_datasets"] = list(lc.get("data", {}).get("datasets", []))
        info["data_roots"] += data_roots(lc.get("data", {}).get("root"), info["lam_datasets"])
        info["lam_layout"] = (f"{enc.get('kind', '?')}/{enc.get('layout', '?')}, motion stem {enc.get('motion_stem')}, "
                              f"code pool {model.get('code_pool')}, slot codebooks {model.get('slot_codebooks')}, "
                              f"cosine codes {model.get('quant_norm')}")
    return info


def versions() -> dict:
    """git commit (+ '+dirty'), Python and the packages that decide the numbers."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sha = machine.git_revision(root) or "unknown (not a git checkout)"
    out = {"git": sha, "python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ------------------------------------------------------------------------------------------------------ report
def write_report(out: str, runs: Sequence[Run], *, recipes: Sequence[str], variants: Sequence[str], setup: dict,
                 pretrained: dict[str, dict] | None = None, commands: Sequence[str] = (),
                 version_info: dict | None = None) -> list[str]:
    """Writes OUT/report.md, OUT/comparison.md and the plots; returns the paths written.

    setup: what the header states ("demos", "seeds", "episodes", "eval_seed", "data_root", "data_seeds": the
    number of data-generation world seeds checked to be disjoint, "command": the comparison's own command line;
    optional "title" (the heading; default the demo world's), "eval_world_seeds" [first, last] (the world seeds
    played, when the world maps --eval-seed to others: Meta-World's 2^31 + seed + i)) and "left" (what the grid has
    still to run, for the Cost section)).
    pretrained: variant -> {recipe -> pretrained_info()}. Runs' ``gifs`` are absolute paths (linked relative)."""
    if not runs:
        raise UserError(f"no finished evaluation to report on in {out!r}: run the comparison first")
    groups = group(runs, recipes, variants)
    fams = families(runs)
    overall = [{**pooled(rs), "label": label(r, v), "demos": n} for (r, v, n), rs in groups.items()]
    written = [plot_vs_demos(overall, os.path.join(out, "success_vs_demos.png")),
               plot_vs_demos(overall, os.path.join(out, "progress_vs_demos.png"), value="progress",
                             ci="progress_ci95", ylabel="task progress (bootstrap 95% CI)",
                             title="Closed-loop task progress vs. labelled demos")]
    top = max(n for _, _, n in groups)
    fam_png = os.path.join(out, f"families_{top}_demos.png")
    written.append(plot_families(groups, fams, top, fam_png))
    e0, e1 = setup.get("eval_world_seeds") or (setup["eval_seed"], setup["eval_seed"] + setup["episodes"] - 1)
    md = [f"# {setup.get('title', 'Demo-world comparison: scratch vs LAPA vs ViPRA vs reference policies')}", "",
          f"Demo counts {setup['demos']}, fine-tuning seeds {setup['seeds']}{_replicates(runs)}, "
          f"{setup['episodes']} closed-loop "
          f"episodes per policy on world seeds {e0}–{e1} (the same for every policy: all differences are paired; "
          f"disjoint from the {setup.get('data_seeds', '?')} data-generation world seeds of the datasets "
          f"under {setup.get('data_root', '?')} and of those the pretrained runs read, checked). "
          f"Task families: {', '.join(fams)}.", "",
          "Success: episodes that reached the goal, pooled over the fine-tuning seeds (k/n), Wilson 95 % interval. "
          "Progress: the per-episode fraction of the way to the goal (docs/demo_world.md; Meta-World: the best "
          "reward / 10, docs/metaworld.md), mean with a bootstrap "
          "95 % interval over world seeds (each world seed's value averaged over the fine-tuning seeds first). Per "
          "seed: the same figures of each fine-tuning seed alone. Δ: paired differences on the same world seeds. "
          "How to read it: docs/demo_world.md, section \"The comparison\".", "", "## Overall", ""]
    md += scope_tables(groups, None, variants)
    md += ["![success vs demos](success_vs_demos.png)", "", "![progress vs demos](progress_vs_demos.png)", "",
           f"![per family at {top} demos]({os.path.basename(fam_png)})", ""]
    for f in fams:
        md += [f"## Family: {f}", "", *scope_tables(groups, f, variants)]
    md += _rollouts(out, groups, top)
    md += _pretrained(pretrained or {})
    md += compare_cost.cost_section(out, [(label(r, v), n, [run.name for run in rs if run.name])
                                          for (r, v, n), rs in groups.items()], left=setup.get("left", ""))
    info = version_info or versions()
    md += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    md += ["## Commands", "", "The comparison: `" + setup.get("command", "?") + "`; every run (also in "
           "manifest.json and commands.sh):", "", "```bash", *commands, "```", ""]
    path = os.path.join(out, "report.md")
    _write(path, "\n".join(md))
    rows = [[label(r, v), str(n), _rate(p), _prog(p)] for (r, v, n), p in
            ((k, pooled(rs)) for k, rs in groups.items())]
    _write(os.path.join(out, "comparison.md"), "\n".join(_table(
        ["policy", "demos", "success % [Wilson 95 %] (k/n)", "progress [bootstrap 95 %]"], rows)))
    return [path, os.path.join(out, "comparison.md"), *written]


def _replicates(runs: Sequence[Run]) -> str:
    """The header's note on pretraining runs, when some variant has more than one."""
    per: dict[str, int] = {}
    for r in runs:
        if r.pretrain:
            name = label(r.recipe, r.variant)
            per[name] = max(per.get(name, 0), r.pretrain + 1)
    if not per:
        return ""
    return (" (from every pretraining run of the variant: " + ", ".join(f"{k} {n}" for k, n in per.items())
            + " runs; seed 'pK:S' is fine-tuning seed S from pretraining run K + 1)")


def _rollouts(out: str, groups: dict, demos: int) -> list[str]:
    """Links to the first rollouts of each policy at ``demos`` demos (its lowest fine-tuning seed)."""
    lines = []
    for (r, v, n), runs in groups.items():
        if n == demos:
            for g in [g for g in runs[0].gifs if os.path.isfile(g)][:ROLLOUTS_PER_POLICY]:
                rel = os.path.relpath(g, out).replace(os.sep, "/")
                lines.append(f"- [{label(r, v)}, {n} demos, seed {runs[0].seed}: {os.path.basename(g)}]({rel})")
    return ["## Example rollouts", "", "The first episodes (same world seeds for every policy):", "", *lines, ""] \
        if lines else []


def _pretrained(pretrained: dict[str, dict]) -> list[str]:
    rows = []
    for variant, per_recipe in pretrained.items():
        for recipe, i in per_recipe.items():
            if i.get("missing"):
                rows.append([variant or "—", recipe, i["run"], "no checkpoint", "", "", "", "", "", ""])
                continue
            rows.append([variant or "—", recipe, i["run"], i["preset"], "+".join(i["datasets"]), str(i["steps"]),
                         str(i["lam_preset"]), "+".join(i.get("lam_datasets", [])) or "?", i["lam_codes"],
                         i.get("lam_layout", "?")])
    if not rows:
        return []
    head = ["pretraining", "recipe", "run", "preset", "datasets", "steps", "LAM preset", "LAM datasets",
            "LAM codes (per step × codebook)", "LAM layout"]
    return ["## Pretrained runs", "", "Read from each run's checkpoint assets (config.json, frozen.json) and its "
            "LAM run's config.json:", "", *_table(head, rows)]


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)  # a reader never sees half a report
