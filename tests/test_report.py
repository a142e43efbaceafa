"""scripts/report.py: a run directory -> index.html + report.md whose every referenced file exists, with the
sections the run has content for (a partial run still gets a page)."""

import json
import os
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import report  # noqa: E402  (scripts/report.py)

from core.errors import UserError  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # existence is what the report checks; contents are the browser's business
GIF = b"GIF89a" + b"\0" * 16


class _Page(HTMLParser):
    """Collects h2 headings, referenced files (img src, a href), table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.h2, self.refs, self.cells, self._tag = [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.refs.append(a["src"])
        elif tag == "a" and not a.get("href", "#").startswith("#"):
            self.refs.append(a["href"])
        self._tag = tag

    def handle_data(self, data):
        if self._tag == "h2":
            self.h2.append(data)
        elif self._tag in ("td", "th"):
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._tag = None


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))


def _stage(logs: Path, name: str, headline: str, outputs: str) -> None:
    _write(logs / f"{name}.stage.json", {"name": name, "status": "ran", "seconds": 75.0, "headline": headline,
                                         "outputs": outputs})


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A demo run as the stages leave it: vqgan, both LAMs (vipra without latent_transfer), LAPA pretraining only,
    one comparison run with rollouts (one listed in closed_loop.json by a cwd-relative path, one only on disk)."""
    monkeypatch.chdir(tmp_path)
    r = tmp_path / "runs" / "demo run"  # a space: URLs must be quoted
    _stage(r / "logs", "data", "robot 170 episodes", str(r / "data"))
    _stage(r / "logs", "vqgan", "PSNR 24.10 dB", str(r / "vqgan"))
    _write(r / "vqgan" / "recon.png", PNG)
    _write(r / "vqgan" / "eval.json", {"step": 800, "psnr": 24.1, "baseline_psnr": 20.3, "codebook_used_frac": 0.87})
    for fam in ("lapa", "vipra"):
        ev = r / "lam" / fam / "eval"
        for name, _ in report.LAM_PLOTS:
            if not (fam == "vipra" and name == "latent_transfer"):
                _write(ev / f"{name}.png", PNG)
        _write(ev / "metrics.json", {"codebook/perplexity": 5.5, "codebook/size": 8, "probe/direction_acc": 0.9,
                                     "probe/direction_majority": 0.3, "recon/psnr": 30.0,
                                     "recon/psnr_copy_last": 27.0})
    _write(r / "vla" / "lapa" / "curves.png", PNG)
    _write(r / "vla" / "lapa" / "summary.json", {"eval": {"acc_latent": 0.61, "latent_chance": 0.125,
                                                          "latent_majority": 0.2}, "train": {}})
    c = r / "compare"
    _write(c / "comparison.md", "| name | demos | success % |\n|---|---:|---:|\n| lapa (4 demos) | 4 | 50.0 (2/4) |\n")
    _write(c / "success_vs_demos.png", PNG)
    _write(c / "lapa_4" / "rollouts" / "000_seed0_success_pick.gif", GIF)
    _write(c / "lapa_4" / "rollouts" / "001_seed1_failure_pick.gif", GIF)
    listed = os.path.relpath(c / "lapa_4" / "rollouts" / "000_seed0_success_pick.gif", tmp_path)
    _write(c / "lapa_4" / "closed_loop.json", {"success_rate": 0.5, "ci95": [0.15, 0.85], "successes": 2,
                                               "episodes": 4, "gifs": [listed, "/gone/002_seed2_failure.gif"]})
    _stage(c / "logs", "lapa_4", "success 50.0%", str(c / "lapa_4"))
    return r


def _check(root: Path) -> _Page:
    html_path, md_path = report.write_report(str(root))
    page = _Page()
    page.feed(Path(html_path).read_text())
    assert page.refs, "the page references no files"
    for ref in page.refs:
        assert not urllib.parse.urlparse(ref).scheme and not ref.startswith("/"), ref  # relative, no network
        assert (root / urllib.parse.unquote(ref)).is_file(), ref
    md = Path(md_path).read_text()
    for ref in page.refs:  # report.md shows the same images
        assert f"]({ref})" in md, ref
    for title in page.h2:
        assert f"## {title}" in md
    return page


def test_full_run_has_every_section_and_only_existing_files(run_dir):
    page = _check(run_dir)
    assert page.h2 == ["Stages", "VQGAN image tokenizer", "Latent action models", "VideoLLaMA pretraining",
                       "Policy comparison", "Rollouts"]
    refs = {urllib.parse.unquote(r) for r in page.refs}
    assert "vqgan/recon.png" in refs and "vla/lapa/curves.png" in refs
    assert {f"lam/lapa/eval/{n}.png" for n, _ in report.LAM_PLOTS} <= refs
    assert "lam/vipra/eval/latent_transfer.png" not in refs and "vla/vipra/curves.png" not in refs
    assert {"compare/success_vs_demos.png", "compare/lapa_4/rollouts/000_seed0_success_pick.gif",
            "compare/lapa_4/rollouts/001_seed1_failure_pick.gif"} <= refs
    # stage table: demo stages first, then the comparison's; paths relative to the run; the comparison table parsed
    assert page.cells[page.cells.index("data") + 4] == "data"
    assert page.cells.index("data") < page.cells.index("vqgan") < page.cells.index("lapa_4")
    assert "lapa (4 demos)" in page.cells and "50.0 (2/4)" in page.cells
    text = (run_dir / "index.html").read_text()
    assert "PSNR 24.10 dB" in text and "perplexity 5.50 of 8" in text and "latent-action acc 0.610" in text


def test_comparison_dir_on_its_own(run_dir):
    page = _check(run_dir / "compare")  # what scripts/compare.py writes
    assert page.h2 == ["Stages", "Policy comparison", "Rollouts"]
    assert "success_vs_demos.png" in page.refs


def test_partial_and_empty_runs_still_get_a_page(tmp_path, run_dir):
    for d in ("lam", "vla", "compare"):
        import shutil

        shutil.rmtree(run_dir / d)
    page = _check(run_dir)
    assert page.h2 == ["Stages", "VQGAN image tokenizer"]
    empty = tmp_path / "empty"
    empty.mkdir()
    report.write_report(str(empty))
    assert "Nothing to show yet" in (empty / "index.html").read_text()


def test_cli_and_bad_directory(run_dir, tmp_path, capsys):
    assert report.main([str(run_dir)]) == 0
    assert "index.html" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"run directory .*nope.* not found: expected the --out directory"):
        report.write_report(str(tmp_path / "nope"))
