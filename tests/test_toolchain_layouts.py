"""The whole toolchain, as a user types it, on a real-layout fixture of every registered dataset (issue 21, part 4).

For each entry of `data.oxe.REGISTRY` a tiny TFDS dataset with that dataset's real feature layout
(tests/rlds_fixtures.py: keys, dtypes, nested action dicts, zlib tensors, int / text episode ids, camera flags) gets,
through the command-line entry points in subprocesses:

    vqgan_train → lam.train → lam.evaluate → label_latent_actions → cache_image_tokens (train, val)
    → latent_pretraining.train (LAPA debug, from both offline caches) → latent_pretraining.train (ViPRA debug, VQGAN
    and LAM inside the step) → policy.finetune (ViPRA debug, from that ViPRA run)

What each step must prove per layout is that the tool READS that layout; anything that is only an input to a later
tool may be shared or chained:
  * every tool that opens the dataset runs on every layout, with tiny step counts (2 steps of training);
  * the text tokenizer is layout-independent (one SentencePiece model for all), and ViPRA pretraining uses one
    `vipra_tiny` LAM trained once on a demo-layout fixture: the LAM is an input there, what is per layout is the
    pretraining's own reading of the frames it labels inside the step;
  * the per-layout artefacts chain, so a layout-specific mistake upstream shows downstream: the layout's own VQGAN
    tokenizes its frames (cache_image_tokens) and is ViPRA's frozen tokenizer; the layout's own LAM is evaluated and
    labels its episodes; LAPA pretraining joins both caches on the layout's episode ids (a cache written under other
    ids, or missing an episode, fails the join); the policy fine-tunes from the layout's ViPRA run;
  * datasets without actions (video-only: demo_human, ssv2, metaworld_video) must refuse the policy fine-tune with one
    clear line naming the dataset (asserted), and run every other tool.

Each command line is recorded; with TOOLCHAIN_COMMANDS=<file> the test appends them (JSON lines, one per layout), the
record the closing note of issue 21 asks for. Slow tier (about a minute per layout on a 2-core CPU); the default tier
covers the same readers in-process: tests/test_real_layouts.py (Bridge through every tool, `lam.train` → evaluate →
label), tests/test_data_oxe.py (every layout standardized) and `test_every_layout_is_read_by_the_episode_reader`
below.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import rlds_fixtures as fx

from data import episodes, oxe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = sorted(oxe.REGISTRY)
RES = 16  # VLA / tiny VQGAN frame size
FIXTURE = dict(episodes=4, lengths=(10, 14), splits=("train", "val"), shards=1, res=64)  # 64: the tiny LAMs' size
QUIET = ["--config.train.checkpoint.async_save=False", "--config.train.log.progress=off",
         "--config.train.log.tensorboard=False"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")  # scripts/*.py import this checkout
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")  # 1 device
    return env


def _run(cmd: list[str], log: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Runs `cmd` from the repository root as a user would (python replaced by this interpreter) and records it."""
    log.append(shlex.join(["python", *cmd[1:]]))
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    if expect_ok and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {log[-1]}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def _datasets(name: str) -> str:
    return f"--config.data.datasets=('{name}',)"


def _lam_cmd(preset: str, root: str, name: str, workdir: str, flow_target: str) -> list[str]:
    return [sys.executable, "-m", "lam.train", f"--config=configs/lam.py:{preset}", f"--workdir={workdir}",
            f"--config.data.root={root}", _datasets(name), "--config.data.weights=(1.0,)",
            f"--config.data.cache_dir={workdir}_cache", "--config.data.batch_size=8",
            f"--config.loss.flow_target={flow_target}", "--config.train.total_steps=2",
            "--config.train.checkpoint.every=2", "--config.eval.batches=2", "--config.eval.batch_size=8",
            *QUIET, "--overwrite"]


def _flow_target(name: str) -> str:
    """The demo layouts store ground-truth flow; every other layout needs Farneback targets (lam.train says so)."""
    return "ground_truth" if name.startswith("demo_") else "farneback"


def _steps(root: str, name: str, split: str) -> int:
    """Standardized steps of a split (registry conventions and filters applied): what every per-step cache holds."""
    src = episodes.EpisodeSource(root, name, split=split)
    return sum(len(e) for e in episodes.iter_episodes(src, RES, decode=False))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, str]:
    """Layout-independent inputs: the demo SentencePiece model and a `vipra_tiny` LAM trained on a demo fixture."""
    from vla_fixtures import write_tokenizers

    base = tmp_path_factory.mktemp("toolchain_shared")
    tok, _ = write_tokenizers(base)
    root = str(base / "data")
    fx.write_dataset(root, "demo_robot", **FIXTURE)
    lam = str(base / "lam_vipra")
    _run(_lam_cmd("vipra_tiny", root, "demo_robot", lam, "ground_truth"), [])
    return {"tokenizer": tok, "vipra_lam": lam}


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_is_read_by_the_episode_reader(name: str) -> None:
    """Default-tier counterpart (about 1 s per layout): data/episodes.py, the one reader behind vqgan_data, lam/data.py
    and both caches, reads the primary camera of every registered layout, step for step as the fixture wrote it
    (episode i has 6 + i % 7 steps; registry conventions applied: Bridge drops its first step, kuka keeps successes).
    The tools' own use of it is covered in-process on Bridge by tests/test_real_layouts.py."""
    root = fx.shared_root("oxe")
    spec = oxe.get_spec(name)
    eps = list(episodes.iter_episodes(episodes.EpisodeSource(root, name), RES))
    index = [int(e.language.rsplit("ep", 1)[1]) for e in eps]
    assert sorted(index) == ([0, 2, 4] if name == "kuka" else list(range(6)))
    for i, e in zip(index, eps, strict=True):
        assert len(e) == 6 + i % 7 - int(spec.drop_first_step)
        assert e.frames.shape == (len(e), RES, RES, 3) and e.frames.dtype == np.uint8 and e.frame_valid.all()
        assert e.frames.std() > 0  # decoded pixels, not blank fill
        assert e.action_valid.any() == spec.has_actions


def test_lam_refuses_ground_truth_flow_of_another_size(tmp_path) -> None:
    """Demo-layout flow is in the stored frames' pixels: a LAM reading frames at another size gets one line naming
    the fix (it used to fail inside the jitted loss with a broadcasting error, (8,2,64,64,2) vs (8,2,32,32,2))."""
    from core.errors import UserError
    from lam import data as lam_data

    root = str(tmp_path)
    fx.write_dataset(root, "demo_robot", episodes=1, lengths=(4, 4), res=16, shards=1)
    with pytest.raises(UserError, match=r"flow at 16x16 px but the LAM reads frames at 32 px: set "
                                        r"model.image_size=16 or loss.flow_target='farneback'"):
        lam_data.load_table(root, ["demo_robot"], "train", with_flow=True, resolution=32)
    t = lam_data.load_table(root, ["demo_robot"], "train", with_flow=True, resolution=16)
    assert t.flow.shape == (4, 16, 16, 2)
    assert lam_data.load_table(root, ["demo_robot"], "train", with_flow=False, resolution=32).num_steps == 4


def test_policy_finetune_refuses_video_only_datasets() -> None:
    from core.errors import UserError
    from policy.finetune import require_actions

    require_actions(("bridge_dataset:1.0.0@/data/rail", "demo_robot=0.5"))  # entries with actions pass
    for entry in ("ssv2@/data/v:2", "demo_human", "metaworld_video:1.0.0"):
        name = entry.partition("@")[0].partition(":")[0]
        with pytest.raises(UserError, match=f"dataset '{name}' is video-only .* needs datasets with actions"):
            require_actions(("demo_robot", entry))


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYOUTS)
def test_toolchain_on_layout(name: str, shared: dict[str, str], tmp_path) -> None:
    root = str(tmp_path / "data")
    fx.write_dataset(root, name, **FIXTURE)
    w = lambda sub: str(tmp_path / sub)
    spec = oxe.get_spec(name)
    log: list[str] = []
    py = sys.executable

    # 1. VQGAN: a few steps on this layout's frames; its export is this layout's tokenizer below
    _run([py, "-m", "latent_pretraining.vqgan_train", "--config=configs/vqgan.py:tiny", f"--workdir={w('vqgan')}",
          f"--config.data.root={root}", _datasets(name), "--config.data.val_frames=8",
          "--config.train.total_steps=2", "--config.train.checkpoint.every=2", *QUIET, "--overwrite"], log)
    vq = os.path.join(w("vqgan"), "tokenizer.safetensors")
    assert os.path.exists(vq)

    # 2. LAM train -> evaluate -> label (this layout's LAM labels this layout's episodes)
    _run(_lam_cmd("lapa_tiny", root, name, w("lam"), _flow_target(name)), log)
    out = _run([py, "-m", "lam.evaluate", f"--workdir={w('lam')}"], log).stdout
    m = json.loads(out[out.index("{"):])
    assert math.isfinite(m["recon/psnr"]) and math.isfinite(m["recon/psnr_copy_last"])
    _run([py, "scripts/label_latent_actions.py", f"--lam={w('lam')}", f"--data-root={root}", f"--datasets={name}",
          "--splits=train,val", f"--out={w('labels')}", "--batch-size=8"], log)
    for split in ("train", "val"):
        z = np.load(os.path.join(w("labels"), name, f"{split}.npz"))
        assert len(z["ids"]) == _steps(root, name, split) > 0

    # 3. image-token cache with this layout's VQGAN, one file per split
    for split in ("train", "val"):
        _run([py, "scripts/cache_image_tokens.py", f"--tokenizer={vq}", f"--root={root}", f"--datasets={name}",
              f"--split={split}", f"--output={w('tokens')}/{split}.npz", "--batch-size=8"], log)
        z = np.load(os.path.join(w("tokens"), f"{split}.npz"))
        assert z["ids"].shape[0] == _steps(root, name, split) and list(z["dataset_name"]) == [name]

    # 4. LAPA (both offline caches joined on this layout's episode ids) and ViPRA (VQGAN + LAM inside the step)
    vla = [f"--config.text.tokenizer={shared['tokenizer']}", f"--config.data.root={root}", _datasets(name),
           "--config.data.weights=(1.0,)", f"--config.data.resolution={RES}", "--config.data.shuffle_buffer=64",
           "--config.train.total_steps=2", "--config.train.checkpoint.every=2", *QUIET, "--overwrite"]
    summaries = {}
    for recipe, extra in (
            ("lapa", [f"--config.vision.tokenizer={vq}", f"--config.latent.lam_workdir={w('lam')}",
                      f"--config.cache.image={w('tokens')}/{{split}}.npz", f"--config.cache.latent={w('labels')}"]),
            ("vipra", [f"--config.vision.tokenizer={vq}", f"--config.latent.lam_workdir={shared['vipra_lam']}"])):
        out = _run([py, "-m", "latent_pretraining.train", f"--config=configs/{recipe}.py:debug",
                    f"--workdir={w(recipe)}", *extra, *vla], log).stdout
        summaries[recipe] = json.loads(out[out.index("{"):])
        assert os.path.isdir(os.path.join(w(recipe), "checkpoints")), recipe

    # 5. policy fine-tune from this layout's ViPRA run; video-only layouts must refuse it in one clear line
    p = _run([py, "-m", "policy.finetune", "--config=configs/policy.py:vipra_debug", f"--workdir={w('policy')}",
              f"--config.policy.pretrained={w('vipra')}", "--config.policy.eval_episodes=0", *vla[1:]], log,
             expect_ok=spec.has_actions)
    if not spec.has_actions:
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        assert p.returncode == 2 and f"dataset {name!r} is video-only" in err[-1], p.stderr[-2000:]
        assert "Traceback" not in p.stderr and not os.path.exists(w("policy")), p.stderr[-2000:]
    else:
        assert os.path.isdir(os.path.join(w("policy"), "checkpoints"))

    record = os.environ.get("TOOLCHAIN_COMMANDS")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"dataset": name, "layout": fx.layouts()[name][0], "commands": log,
                                "policy": "refused: " + err[-1] if not spec.has_actions else "ok",
                                "summaries": {k: {m: v for m, v in s.items() if isinstance(v, (int, float))}
                                              for k, s in summaries.items()}}) + "\n")
