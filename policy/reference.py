"""Reference policies for the demo-world comparison: behaviour cloning on exactly the demos the VLA recipes get.

They calibrate what N demonstrations can buy at this compute, beside the pretrained recipes:

- ``state``: a privileged-state MLP. Input: ground-truth effector and block positions, presence, the task encoded
  exactly (family, block a / b, region point, direction) and the effector→block / block→goal vectors
  (``state_features``). No perception problem at all: an upper reference for what cloning N demos gives.
- ``image``: a small image network with no pretraining. Input: the current frame (conv encoder) and the
  instruction (bag of word embeddings over the demo-world vocabulary). The honest from-scratch vision baseline.

Both regress an H-step chunk of native actions (dx, dy) / MAX_STEP with MSE and execute the whole chunk (the
VLA flow policies do the same). Training data: the first ``num_demos`` episodes of the dataset's train split,
the same TFDS slice ``policy.finetune`` uses (``train[:N]``).

    python -m policy.reference --kind state --data-root runs/demo/data --num-demos 50 --workdir runs/ref/state50 \
        [--overwrite]                                 # a non-empty --workdir is refused without it
    python -m policy.reference --kind image --data-root runs/demo/data --num-demos 50 --workdir runs/ref/image50 \
        --eval-episodes 100 --eval-seed 1000

A run directory holds ``params.msgpack`` (flax serialization, no pickle), ``reference.json`` (kind, sizes, data,
training curve) and, with ``--eval-episodes``, ``closed_loop.json`` (policy/evaluate.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import InvalidInput
from data.demo import tasks as tasks_lib
from data.demo.world import MAX_STEP, DemoWorld, WorldConfig

KINDS = ("state", "image")
NUM_FAMILIES = len(tasks_lib.TASK_FAMILIES)
STATE_DIM = 2 + 2 * tasks_lib.MAX_BLOCKS + tasks_lib.MAX_BLOCKS + NUM_FAMILIES + 2 * tasks_lib.MAX_BLOCKS + 2 + 2 + 6
MAX_WORDS = 12


@dataclasses.dataclass(frozen=True)
class RefConfig:
    """What a reference policy is and how it trains (stored in reference.json)."""

    kind: str = "state"
    chunk: int = 4  # actions predicted (and executed) per query
    hidden: int = 256
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    shift: int = 0  # image kind: random-shift augmentation of up to this many pixels per training sample (DrQ)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            from core.errors import UserError, unknown

            raise UserError(unknown("reference policy kind", self.kind, KINDS))
        if self.chunk < 1 or self.steps < 1 or self.batch_size < 1 or self.shift < 0:
            raise InvalidInput(f"chunk, steps and batch_size must be >= 1 and shift >= 0, got {self.chunk}, "
                               f"{self.steps}, {self.batch_size}, {self.shift}")


# ------------------------------------------------------------------------------------------------- features
def goal_point(task: tasks_lib.Task, blocks: np.ndarray) -> np.ndarray:
    """Where block a should go (region point, block b, or start + direction), float[2]; the effector task: block a."""
    if task.family == "push_to_region":
        return np.asarray(tasks_lib.REGIONS[task.region], float)
    if task.family == "push_direction":
        return np.asarray(task.start) + np.asarray(tasks_lib.DIRECTIONS[task.direction]) * tasks_lib.PUSH_DIST
    if task.b is not None:
        return np.asarray(blocks[task.b], float)
    return np.asarray(blocks[task.a], float)


def state_features(task: tasks_lib.Task, effector: np.ndarray, blocks: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Privileged input of the state policy, float32[STATE_DIM]: effector, blocks × presence, presence, family
    one-hot, a / b one-hots, region point, direction, effector→a, effector→b, a→goal."""
    eye = np.eye(tasks_lib.MAX_BLOCKS, dtype=np.float32)
    a_pos = blocks[task.a]
    b_pos = blocks[task.b] if task.b is not None else a_pos
    parts = [
        effector, (blocks * present[:, None]).reshape(-1), present.astype(np.float32),
        np.eye(NUM_FAMILIES, dtype=np.float32)[tasks_lib.TASK_FAMILIES.index(task.family)],
        eye[task.a], eye[task.b] if task.b is not None else np.zeros(tasks_lib.MAX_BLOCKS, np.float32),
        np.asarray(tasks_lib.REGIONS[task.region]) if task.region else np.zeros(2),
        np.asarray(tasks_lib.DIRECTIONS[task.direction]) if task.direction else np.zeros(2),
        a_pos - effector, b_pos - effector, goal_point(task, blocks) - a_pos,
    ]
    return np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in parts])


def vocabulary() -> dict[str, int]:
    """Every word the demo-world templates can produce -> id (0 = padding, 1 = unknown word)."""
    words: set[str] = set()
    for templates in tasks_lib.TEMPLATES.values():
        for t in templates:
            words.update(_words(t.replace("{a}", "").replace("{b}", "").replace("{region}", "")
                                .replace("{direction}", "")))
    for extra in (*tasks_lib.COLORS, *tasks_lib.REGIONS, *tasks_lib.DIRECTIONS):
        words.update(_words(extra))
    return {w: i + 2 for i, w in enumerate(sorted(words))}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def encode_instruction(text: str, vocab: dict[str, int]) -> np.ndarray:
    """int32[MAX_WORDS] word ids (unknown words 1, padding 0)."""
    ids = [vocab.get(w, 1) for w in _words(text)][:MAX_WORDS]
    return np.asarray(ids + [0] * (MAX_WORDS - len(ids)), np.int32)


def action_chunks(actions: np.ndarray, chunk: int) -> np.ndarray:
    """Per step t the next ``chunk`` native actions a[t:t+chunk] / MAX_STEP, zero past the end: f32[T, chunk, 2]."""
    t = len(actions)
    padded = np.concatenate([actions, np.zeros((chunk, 2), actions.dtype)]) / MAX_STEP
    return np.stack([padded[i:i + chunk] for i in range(t)]).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class Demos:
    """Every step of the first N train episodes. S steps in all."""

    images: np.ndarray  # uint8[S, R, R, 3] (decoded JPEG, as the VLA recipes see them)
    states: np.ndarray  # float32[S, STATE_DIM]
    words: np.ndarray  # int32[S, MAX_WORDS]
    targets: np.ndarray  # float32[S, H, 2] native action chunks / MAX_STEP
    seeds: list[int]  # world seeds of the episodes (for eval-seed disjointness checks)


def load_demos(data_root: str, num_demos: int, chunk: int, *, dataset: str = "demo_robot", version: str = "1.0.0",
               split: str = "train") -> Demos:
    """Reads the first ``num_demos`` episodes of ``<data_root>/<dataset>/<version>`` (split ``train[:N]``). The task
    of each episode (block a / b, region, direction) is regenerated exactly from its stored world seed."""
    from core.errors import UserError
    from data import rlds
    from data.tf_setup import tfds
    from policy.evaluate import world_config_from_dataset

    opened = rlds.open_dataset(data_root, dataset, version)
    have = opened.splits.get(split, 0)
    if num_demos < 1 or num_demos > have:
        raise UserError(f"num_demos {num_demos}: {opened.path} split {split!r} has {have} episodes "
                        f"(expected 1..{have})")
    world = DemoWorld(dataclasses.replace(world_config_from_dataset(opened.path), images=False))
    vocab = vocabulary()
    images, states, words, targets, seeds = [], [], [], [], []
    for ep in tfds.as_numpy(opened.builder.as_dataset(split=f"{split}[:{num_demos}]", shuffle_files=False)):
        seed = int(ep["episode_metadata"]["seed"])
        world.reset(seed=seed)
        steps = list(ep["steps"])
        text = steps[0]["language_instruction"].decode()
        if text != world.task.instruction:
            raise UserError(f"{opened.path}: episode seed {seed} regenerates {world.task.instruction!r} but the data "
                            f"says {text!r}: the dataset was not written by this demo world version")
        actions = np.stack([np.asarray(s["action"], np.float32)[:2] for s in steps])
        targets.append(action_chunks(actions, chunk))
        for s in steps:
            gt = s["ground_truth"]
            states.append(state_features(world.task, gt["effector_pos"], gt["block_pos"], gt["block_present"]))
            images.append(s["observation"]["image"])
            words.append(encode_instruction(text, vocab))
        seeds.append(seed)
    return Demos(np.stack(images), np.stack(states), np.stack(words), np.concatenate(targets), seeds)


# ---------------------------------------------------------------------------------------------------- models
def make_model(cfg: RefConfig, vocab_size: int) -> Any:
    """The Flax module of ``cfg.kind``: __call__(states f32[B, F], images u8[B, R, R, 3], words i32[B, L]) ->
    f32[B, H, 2]."""
    import flax.linen as nn
    import jax.numpy as jnp

    class StateMLP(nn.Module):
        @nn.compact
        def __call__(self, states, images, words):
            h = states
            for _ in range(2):
                h = nn.gelu(nn.Dense(cfg.hidden)(h))
            return nn.Dense(cfg.chunk * 2)(h).reshape(-1, cfg.chunk, 2)

    class ImageBC(nn.Module):
        @nn.compact
        def __call__(self, states, images, words):
            x = images.astype(jnp.float32) / 255.0 - 0.5
            # 64 px -> 16 x 16 (4-px patches) -> 8 x 8 -> 8 x 8. A patchify stem, because three stride-2 convs from
            # full resolution (32 / 64 / 64 channels, 13 MMAC per image) cost ~0.55 CPU-s per step of 128 on this
            # 2-core CPU (27 CPU-min for 3000 steps; XLA's strided-conv weight gradients dominate); this stack is
            # 3.6 MMAC, ~5x cheaper per step, and keeps the 8 x 8 x 64 map the head reads.
            for feat, k, stride in ((32, 4, 4), (64, 3, 2), (64, 3, 1)):
                x = nn.relu(nn.Conv(feat, (k, k), strides=(stride, stride))(x))
            x = nn.relu(nn.Dense(cfg.hidden)(x.reshape(x.shape[0], -1)))
            emb = nn.Embed(vocab_size, 64)(words)
            mask = (words > 0)[..., None].astype(jnp.float32)
            text = (emb * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)  # mean over the instruction's words
            h = jnp.concatenate([x, nn.Dense(cfg.hidden)(text)], axis=-1)
            h = nn.gelu(nn.Dense(cfg.hidden)(h))
            return nn.Dense(cfg.chunk * 2)(h).reshape(-1, cfg.chunk, 2)

    return StateMLP() if cfg.kind == "state" else ImageBC()


def random_shift(images: Any, key: Any, pad: int) -> Any:
    """uint8[B, R, R, 3] -> the same frames shifted by up to ``pad`` px each way, independently per sample (edge
    padding, then a random R x R crop: DrQ's augmentation)."""
    import jax
    import jax.numpy as jnp

    b, r = images.shape[0], images.shape[1]
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (r, r, images.shape[3]))
    return jax.vmap(crop)(padded, offsets)


def train(cfg: RefConfig, demos: Demos, *, progress: bool = True) -> tuple[Any, list[tuple[int, float]]]:
    """Adam on the chunk MSE; returns (params, [(step, loss)]): the first step's loss, then the mean over each
    following 100 steps."""
    import jax
    import jax.numpy as jnp
    import optax

    model = make_model(cfg, len(vocabulary()) + 2)
    rng = np.random.default_rng(cfg.seed)
    n = len(demos.targets)
    pick = lambda idx: (demos.states[idx], demos.images[idx], demos.words[idx], demos.targets[idx])
    params = model.init(jax.random.PRNGKey(cfg.seed), *pick(np.arange(2))[:3])
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps, alpha=0.1))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, states, images, words, targets, key):
        if cfg.shift and cfg.kind == "image":
            images = random_shift(images, key, cfg.shift)

        def loss_fn(p):
            return jnp.mean((model.apply(p, states, images, words) - targets) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    curve, window = [], []
    bar = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc=f"bc-{cfg.kind}", unit="step", dynamic_ncols=True)
    for i in bar:
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), i)
        params, opt_state, loss = step(params, opt_state, *pick(rng.integers(0, n, cfg.batch_size)), key)
        window.append(loss)
        if i == 0:  # the untrained loss, as the curve's first point
            curve.append((1, float(loss)))
            window = []
        elif (i + 1) % 100 == 0 or i + 1 == cfg.steps:
            curve.append((i + 1, float(np.mean(jax.device_get(window)))))
            window = []
            if progress:
                bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
    return params, curve


# ---------------------------------------------------------------------------------------------------- policy
class ReferencePolicy:
    """A trained reference policy behind the evaluation protocol (policy/evaluate.py). The state policy reads the
    world through ``bind(env)`` (privileged); the image policy uses only the frame and the instruction."""

    def __init__(self, cfg: RefConfig, params: Any, *, num_demos: int | None = None, image_size: int = 64) -> None:
        import jax

        self.cfg, self.params, self.num_demos, self.image_size = cfg, params, num_demos, image_size
        self.vocab = vocabulary()
        self._model = make_model(cfg, len(self.vocab) + 2)
        self._apply = jax.jit(self._model.apply)
        self.env: DemoWorld | None = None

    def metadata(self) -> dict:
        return {"name": f"bc-{self.cfg.kind}" + (f"-{self.num_demos}" if self.num_demos else ""),
                "recipe": f"bc_{self.cfg.kind}", "num_demos": self.num_demos, "image_size": self.image_size,
                "history_offsets": [0], "action_dim": 7, "chunk": self.cfg.chunk, "execute_steps": self.cfg.chunk}

    def bind(self, env: DemoWorld) -> None:
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        from policy.evaluate import native_to_padded

        if self.cfg.kind == "state":
            if self.env is None:
                raise RuntimeError("the state reference policy reads the world: call bind(env) first (evaluate does)")
            e = self.env
            state = state_features(e.task, e.effector.astype(np.float32), e.blocks.astype(np.float32), e.present)
        else:
            state = np.zeros(STATE_DIM, np.float32)
        words = encode_instruction(instruction, self.vocab)
        out = self._apply(self.params, state[None], np.asarray(images[-1:], np.uint8), words[None])
        return native_to_padded(np.clip(np.asarray(out[0]), -1.0, 1.0) * MAX_STEP)

    # ------------------------------------------------------------------------------------------- persistence
    def save(self, workdir: str, extra: dict | None = None) -> None:
        from flax import serialization

        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "params.msgpack"), "wb") as f:
            f.write(serialization.to_bytes(self.params))
        meta = {"config": dataclasses.asdict(self.cfg), "num_demos": self.num_demos, "image_size": self.image_size,
                **(extra or {})}
        with open(os.path.join(workdir, "reference.json"), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, workdir: str) -> ReferencePolicy:
        import jax
        from flax import serialization

        with open(os.path.join(workdir, "reference.json")) as f:
            meta = json.load(f)
        cfg = RefConfig(**meta["config"])
        model = make_model(cfg, len(vocabulary()) + 2)
        r = meta["image_size"]
        template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, STATE_DIM), np.float32),
                                                     np.zeros((1, r, r, 3), np.uint8),
                                                     np.zeros((1, MAX_WORDS), np.int32)))
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
        with open(os.path.join(workdir, "params.msgpack"), "rb") as f:
            params = serialization.from_bytes(template, f.read())
        return cls(cfg, params, num_demos=meta["num_demos"], image_size=r)


# ------------------------------------------------------------------------------------------------------- CLI
def run(cfg: RefConfig, *, data_root: str, num_demos: int, workdir: str, eval_episodes: int = 0,
        eval_seed: int = 1000, progress: bool = True, overwrite: bool = False) -> dict:
    """Train on the first ``num_demos`` demos, save to ``workdir`` and (optionally) evaluate closed loop on world
    seeds ``eval_seed + i`` (refused if one of them is a training episode's seed). A non-empty ``workdir`` is
    refused unless ``overwrite``; then the old run is moved aside and deleted once the new one is saved (restored
    if training fails first), as for the trainers' --overwrite (latent_pretraining/training/rundir.py)."""
    from core.errors import UserError
    from latent_pretraining.training import rundir
    from policy.evaluate import evaluate, world_config_from_dataset

    t0 = time.time()
    demos = load_demos(data_root, num_demos, cfg.chunk)
    clash = set(demos.seeds) & set(range(eval_seed, eval_seed + eval_episodes))
    if clash:
        raise UserError(f"evaluation seeds {sorted(clash)[:5]} are training episodes' seeds: "
                        "choose another --eval-seed")
    run_dir = rundir.prepare(workdir, resume=False, overwrite=overwrite)
    try:
        params, curve = train(cfg, demos, progress=progress)
        policy = ReferencePolicy(cfg, params, num_demos=num_demos, image_size=demos.images.shape[1])
        summary = {"data_root": os.path.abspath(data_root), "train_steps": len(demos.targets), "curve": curve,
                   "train_seconds": time.time() - t0}
        policy.save(workdir, summary)
    except BaseException:
        run_dir.abort()
        raise
    run_dir.commit()
    if eval_episodes > 0:
        wcfg: WorldConfig = world_config_from_dataset(os.path.join(data_root, "demo_robot", "1.0.0"))
        res = evaluate(policy, episodes=eval_episodes, seed=eval_seed, world_config=wcfg, progress=progress)
        with open(os.path.join(workdir, "closed_loop.json"), "w") as f:
            json.dump(res, f, indent=2)
        summary["closed_loop"] = res
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--data-root", required=True, help="make_demo_data --out directory")
    p.add_argument("--num-demos", type=int, required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=RefConfig.steps)
    p.add_argument("--chunk", type=int, default=RefConfig.chunk)
    p.add_argument("--batch-size", type=int, default=RefConfig.batch_size)
    p.add_argument("--lr", type=float, default=RefConfig.lr)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--shift", type=int, default=RefConfig.shift,
                   help="image kind: random-shift augmentation, pixels (default 0: none)")
    p.add_argument("--eval-episodes", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --workdir (kept until the new one is saved)")
    a = p.parse_args(argv)
    cfg = RefConfig(kind=a.kind, chunk=a.chunk, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                    shift=a.shift)
    s = run(cfg, data_root=a.data_root, num_demos=a.num_demos, workdir=a.workdir, eval_episodes=a.eval_episodes,
            eval_seed=a.eval_seed, progress=not a.no_progress, overwrite=a.overwrite)
    line = f"bc-{a.kind} on {a.num_demos} demos: final loss {s['curve'][-1][1]:.4f}"
    if "closed_loop" in s:
        r = s["closed_loop"]
        line += f"; success {r['successes']}/{r['episodes']}, progress {r['progress']:.3f}"
    print(line)
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main, trainer=True)
