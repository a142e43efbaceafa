"""A browsable report of a run directory: OUT/index.html (static, no server or network needed; images referenced by
paths relative to OUT) and the same content as OUT/report.md.

    python scripts/report.py runs/demo            # a scripts/demo.py run (also written at the end of the demo)
    python scripts/report.py runs/demo/compare    # a scripts/compare.py run on its own

Sections, each left out when the run has none of its files (a partial run still gets a page):

  Stages                  logs/*.stage.json (+ compare/logs/): status, time, headline figure, outputs
  VQGAN image tokenizer   vqgan/recon.png, vqgan/eval.json
  Latent action models    lam/<family>/eval/{codebook_usage,training,probes,psnr,reconstructions,latent_transfer}.png,
                          lam/<family>/eval/metrics.json
  VideoLLaMA pretraining  vla/<recipe>/curves.png, vla/<recipe>/summary.json
  Policy comparison       compare/comparison.md (as a table), a link to the comparison's own report
                          compare/report.md (policy/compare_report.py), compare/{success,progress}_vs_demos.png,
                          compare/families_*_demos.png
  Rollouts                per policy run compare/<run>/: the rollouts listed in its test.json (or closed_loop.json)
                          "gifs" and any *.gif under the run, a few successes and failures each

In a comparison directory (one with the manifest.json scripts/compare.py writes) the markdown twin of the page is
overview.md, because report.md there is the comparison's statistical report.
"""

from __future__ import annotations

import dataclasses
import glob
import html
import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _stages import StageRecord, duration, figures

# stage order of scripts/demo.py; other stages (the comparison's runs) follow in the order they finished
STAGE_ORDER = ("data", "vqgan", "lam_lapa", "lam_lapa_eval", "lam_vipra", "lam_vipra_eval", "vla_lapa", "vla_vipra")
LAM_PLOTS = (("codebook_usage", "codebook usage"), ("training", "training curves"), ("probes", "linear probes"),
             ("psnr", "next-frame PSNR"), ("reconstructions", "reconstructions"),
             ("latent_transfer", "latent transfer"))
FAMILIES = ("lapa", "vipra")
ROLLOUTS_PER_KIND = 2  # successes and failures shown per policy
IMAGE_EXTS = (".gif", ".png", ".jpg", ".jpeg")


@dataclasses.dataclass
class Section:
    """A heading and its blocks; a block is ("text", str) | ("table", rows) | ("image", relpath, caption) |
    ("link", relpath, caption)."""

    title: str
    blocks: list[tuple] = dataclasses.field(default_factory=list)

    def text(self, s: str) -> None:
        self.blocks.append(("text", s))

    def table(self, rows: list[list[str]]) -> None:
        self.blocks.append(("table", rows))

    def image(self, rel: str, caption: str) -> None:
        self.blocks.append(("image", rel, caption))

    def link(self, rel: str, caption: str) -> None:
        self.blocks.append(("link", rel, caption))


def collect(root: str) -> list[Section]:
    """Every section that has content in the run directory `root` (paths in the blocks are relative to it)."""
    compare_dir = root if os.path.exists(os.path.join(root, "comparison.md")) or _policy_runs(root) else \
        os.path.join(root, "compare")
    sections = [_stages_section(root, compare_dir), _vqgan_section(root), _lam_section(root), _vla_section(root),
                _comparison_section(root, compare_dir), _rollouts_section(root, compare_dir)]
    return [s for s in sections if s.blocks]


def _stages_section(root: str, compare_dir: str) -> Section:
    sec = Section("Stages")
    records = []
    for logs in dict.fromkeys([os.path.join(root, "logs"), os.path.join(compare_dir, "logs")]):
        for path in sorted(glob.glob(os.path.join(logs, "*.stage.json")), key=os.path.getmtime):
            try:
                d = _load(path)  # older records lack the fields added since (they have defaults)
                fields = [f.name for f in dataclasses.fields(StageRecord) if f.name in d]
                records.append(StageRecord(**{k: d[k] for k in fields}))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a half-written or foreign file: the stage is simply not listed
    order = {n: i for i, n in enumerate(STAGE_ORDER)}
    records.sort(key=lambda r: order.get(r.name, len(order)))  # stable: the comparison's runs keep their order
    if records:
        rows = [["stage", "status", "time", "headline", "outputs"]]
        for r in records:
            rows.append([r.name, r.status, duration(r.seconds), r.headline or "—", _rel(r.outputs, root)])
        sec.table(rows)
    return sec


def _vqgan_section(root: str) -> Section:
    sec = Section("VQGAN image tokenizer")
    line = figures(os.path.join(root, "vqgan", "eval.json"))
    if line:
        sec.text(line)
    if os.path.isfile(os.path.join(root, "vqgan", "recon.png")):
        sec.image("vqgan/recon.png", "held-out frames (top) and their reconstructions (bottom)")
    return sec


def _lam_section(root: str) -> Section:
    sec = Section("Latent action models")
    for fam in FAMILIES:
        ev = os.path.join("lam", fam, "eval")
        line = figures(os.path.join(root, ev, "metrics.json"))
        if line:
            sec.text(f"{fam}: {line}")
        for name, caption in LAM_PLOTS:
            if os.path.isfile(os.path.join(root, ev, f"{name}.png")):
                sec.image(f"{ev}/{name}.png", f"{fam}: {caption}")
    return sec


def _vla_section(root: str) -> Section:
    sec = Section("VideoLLaMA pretraining")
    for recipe in FAMILIES:
        wd = os.path.join("vla", recipe)
        line = figures(os.path.join(root, wd, "summary.json"))
        if line:
            sec.text(f"{recipe}: {line}")
        if os.path.isfile(os.path.join(root, wd, "curves.png")):
            sec.image(f"{wd}/curves.png", f"{recipe}: training curves")
    return sec


def _comparison_section(root: str, compare_dir: str) -> Section:
    sec = Section("Policy comparison")
    md = os.path.join(compare_dir, "comparison.md")
    if os.path.isfile(md):
        with open(md) as f:
            rows = markdown_table(f.read())
        if rows:
            sec.table(rows)
    if _is_comparison(compare_dir) and os.path.isfile(os.path.join(compare_dir, "report.md")):
        sec.link(_rel(os.path.join(compare_dir, "report.md"), root), "the full comparison report (per family, paired "
                 "differences, ablation, commands, versions)")
    plots = [("success_vs_demos.png", "closed-loop success vs. labelled demos (95% CIs)"),
             ("progress_vs_demos.png", "task progress vs. labelled demos (95% CIs)")]
    plots += [(os.path.basename(p), "per task family at the largest demo count")
              for p in sorted(glob.glob(os.path.join(compare_dir, "families_*_demos.png")))]
    for name, caption in plots:
        if os.path.isfile(os.path.join(compare_dir, name)):
            sec.image(_rel(os.path.join(compare_dir, name), root), caption)
    return sec


def _is_comparison(path: str) -> bool:
    """A scripts/compare.py output directory (its manifest.json)."""
    try:
        return _load(os.path.join(path, "manifest.json")).get("kind") == "comparison"
    except (OSError, ValueError):
        return False


def _rollouts_section(root: str, compare_dir: str) -> Section:
    sec = Section("Rollouts")
    for run in _policy_runs(compare_dir):
        wd = os.path.join(compare_dir, run)
        found = []
        listed = []
        for result in ("test.json", "closed_loop.json"):
            try:
                listed = _load(os.path.join(wd, result)).get("gifs", [])
                break
            except (OSError, ValueError):
                continue
        for p in listed if isinstance(listed, list) else []:
            # written relative to the process's working directory, or absolute; a moved run dir: try the run's own
            for cand in (p, os.path.join(wd, p), os.path.join(wd, os.path.basename(os.path.dirname(p)),
                                                                   os.path.basename(p))):
                if isinstance(cand, str) and os.path.isfile(cand):
                    found.append(os.path.abspath(cand))
                    break
        found += [os.path.abspath(p) for p in sorted(glob.glob(os.path.join(wd, "**", "*.gif"), recursive=True))]
        found = list(dict.fromkeys(found))
        wins = [p for p in found if "success" in os.path.basename(p)][:ROLLOUTS_PER_KIND]
        losses = [p for p in found if "failure" in os.path.basename(p)][:ROLLOUTS_PER_KIND]
        rest = [p for p in found if p not in wins and p not in losses][:max(0, 2 * ROLLOUTS_PER_KIND - len(wins)
                                                                          - len(losses))]
        for p in wins + losses + rest:
            kind = "success" if p in wins else "failure" if p in losses else "rollout"
            sec.image(_rel(p, root), f"{run}: {kind} ({os.path.basename(p)})")
    return sec


def _policy_runs(compare_dir: str) -> list[str]:
    """The comparison's per-policy run directories (those with a test.json or closed_loop.json), sorted; of a
    scripts/compare.py grid only those at its largest demo count and first seed (one page, not every run)."""
    runs = sorted({os.path.basename(os.path.dirname(p)) for name in ("test.json", "closed_loop.json")
                   for p in glob.glob(os.path.join(compare_dir, "*", name))})
    if _is_comparison(compare_dir):
        jobs = _load(os.path.join(compare_dir, "manifest.json")).get("jobs", [])
        if jobs:
            top, first = max(j["demos"] for j in jobs), min(j["seed"] for j in jobs)
            keep = {j["name"] for j in jobs if j["demos"] == top and j["seed"] == first}
            runs = [r for r in runs if r in keep]
    return runs


# ------------------------------------------------------------------------------------------------------ rendering
def render_html(title: str, sections: list[Section]) -> str:
    """A self-contained static page (inline CSS; images by relative URL)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}"
           "figure{display:inline-block;margin:0.5em;vertical-align:top}img{max-width:100%}"
           "figcaption{font-size:85%;color:#444}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if not sections:
        out.append("<p>Nothing to show yet: no stage of this run has written its outputs.</p>")
    else:
        out.append("<ul>" + "".join(f'<li><a href="#{_anchor(s.title)}">{html.escape(s.title)}</a></li>'
                                    for s in sections) + "</ul>")
    for s in sections:
        out.append(f'<h2 id="{_anchor(s.title)}">{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if b[0] == "text":
                out.append(f"<p>{html.escape(b[1])}</p>")
            elif b[0] == "table":
                head, *body = b[1]
                out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
                out.append("</table>")
            elif b[0] == "link":
                out.append(f'<p><a href="{html.escape(_url(b[1]))}">{html.escape(b[2])}</a></p>')
            else:
                src = html.escape(_url(b[1]))
                out.append(f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(b[2])}"></a>'
                           f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    if not sections:
        out += ["Nothing to show yet: no stage of this run has written its outputs.", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b[0] == "text":
                out += [b[1], ""]
            elif b[0] == "table":
                head, *body = b[1]
                out.append("| " + " | ".join(_md_cell(c) for c in head) + " |")
                out.append("|" + "|".join("---" for _ in head) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in body]
                out.append("")
            elif b[0] == "link":
                out += [f"[{b[2]}]({_url(b[1])})", ""]
            else:
                out += [f"![{b[2]}]({_url(b[1])})", ""]
    return "\n".join(out)


def markdown_table(text: str) -> list[list[str]]:
    """The first pipe table in markdown `text` as rows of cells (the separator row dropped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if all(set(c) <= set("-: ") and c for c in cells):
            continue
        rows.append(cells)
    return rows


def write_report(root: str, title: str | None = None) -> tuple[str, str]:
    """Writes root/index.html and root/report.md (overview.md in a comparison directory); returns their paths."""
    if not os.path.isdir(root):
        raise UserError(f"run directory {root!r} not found: expected the --out directory of scripts/demo.py or "
                        "scripts/compare.py")
    title = title or f"latent-vla run: {os.path.basename(os.path.abspath(root))}"
    sections = collect(root)
    paths = os.path.join(root, "index.html"), os.path.join(root, "overview.md" if _is_comparison(root) else "report.md")
    for path, text in zip(paths, (render_html(title, sections), render_markdown(title, sections)), strict=True):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # a browser open on the old page never sees half a file
    return paths


def _rel(path: str, root: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")


def _url(rel: str) -> str:
    return urllib.parse.quote(rel, safe="/")


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|")


def _load(path: str) -> dict:
    with open(path) as f:
        d = json.load(f)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (scripts/demo.py --out, or scripts/compare.py --out)")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    html_path, md_path = write_report(a.run_dir, a.title)
    print(f"wrote {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
