"""One Meta-World (MuJoCo) task as a seeded, rendered world with the demo world's interface.

    env = MetaWorldEnv("drawer-open-v3", resolution=64)
    obs, info = env.reset(seed=3)          # obs: image uint8[R, R, 3], state f32[4] (hand xyz + gripper opening),
                                           #      raw f64[39] (Meta-World's goal-observable observation)
    obs, reward, terminated, truncated, info = env.step(np.array([dx, dy, dz, grip], np.float32))
    env.success, env.progress, env.steps, env.hand_pos, env.hand_pixel

Seeding: the task's random variation (object and goal positions) is drawn from a generator seeded by ``reset(seed)``
(Meta-World's ``seeded_rand_vec`` path), so an episode is a pure function of its seed; the physics is deterministic.
The goal is observable (``raw[36:39]``), which the scripted experts read.

Rendering: one ``mujoco.Renderer`` per env, created once and reused for every frame of every episode, off-screen
through ``MUJOCO_GL`` (set to ``egl`` here when unset, before MuJoCo is imported). The cheap defaults
(``RenderSettings``) switch off shadows, reflections and multi-sampling: at 64 px these change little in the picture
and cost most of the time (docs/metaworld.md has the measured frames per second).
Never render in a process that has imported TensorFlow (it segfaults; refused here with a RenderError): the writer
and the evaluation harness render through ``data/metaworld/worker.py`` (a TF-free child process).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import numpy as np

from core.errors import UserError
from data.metaworld.tasks import MetaWorldTask, get_task

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview")
DEFAULT_CAMERA = "corner2"
EXPERT_NOISE = 0.1  # std of the Gaussian added to the expert's actions (in [-1, 1] units) before clipping


class RenderError(UserError, RuntimeError):
    """Off-screen rendering is unavailable (no usable OpenGL for the MUJOCO_GL backend)."""


def _check_no_tensorflow() -> None:
    """MuJoCo's EGL rendering segfaults (signal 11) in a process that has imported TensorFlow: refuse instead."""
    if sys.modules.get("tensorflow") is not None:
        raise RenderError("MuJoCo rendering crashes in a process that has imported TensorFlow (MUJOCO_GL="
                          f"{os.environ.get('MUJOCO_GL')!r}): render through data.metaworld.worker (Worker + "
                          "RemoteEnv) instead of MetaWorldEnv(images=True)")


def _render_error(e: BaseException) -> RenderError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return RenderError(f"off-screen rendering unavailable with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({first}); "
                       "install EGL (libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa")


def _import_mujoco() -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")  # off-screen without a display; must precede the first mujoco import
    try:
        import mujoco
    except Exception as e:  # MuJoCo loads the MUJOCO_GL backend (via PyOpenGL) at import; any failure is "no GL"
        raise _render_error(e) from None
    return mujoco


def project_points(points: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray, fovy: float,
                   resolution: int) -> np.ndarray:
    """World points float[N, 3] → float32[N, 2] (x right, y down) in pixels of the stored, vertically flipped image.

    MuJoCo's camera frame has x right, y up and looks along -z; ``cam_mat`` float[3, 3] (or [9], as ``data.cam_xmat``)
    holds those axes as columns in world coordinates, ``fovy`` is the vertical field of view in degrees. Coordinates
    are continuous with pixel i spanning [i, i + 1) (its centre at i + 0.5), the demo world's convention. The renderer
    draws row 0 at the top with the camera's y up; ``MetaWorldEnv.render`` flips the rows, so y here grows with the
    camera's y (the stored image's "down" is the camera's "up"). Points behind the camera are refused.
    """
    d = (np.asarray(points, np.float64).reshape(-1, 3) - np.asarray(cam_pos, np.float64)) \
        @ np.asarray(cam_mat, np.float64).reshape(3, 3)  # rows: camera-frame coordinates R^T (p - c)
    depth = -d[:, 2]
    if np.any(depth <= 0):
        raise ValueError(f"cannot project points behind the camera (depths {depth.tolist()}): expected depth > 0")
    focal = 0.5 * resolution / np.tan(np.deg2rad(fovy) / 2)  # pixels per unit of tangent
    x = 0.5 * resolution + focal * d[:, 0] / depth
    y_rendered = 0.5 * resolution - focal * d[:, 1] / depth  # row coordinate in the renderer's image (top = 0)
    return np.stack([x, resolution - y_rendered], -1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RenderSettings:
    """What the renderer draws. The defaults are the cheapest settings that keep arm, objects and goal visible."""

    shadows: bool = False
    reflections: bool = False
    multisamples: int = 0  # MSAA samples of the off-screen buffer (MuJoCo's default is 4)


class MetaWorldEnv:
    """A Meta-World v3 task with seeded resets, a step limit, fixed-camera images and the demo world's protocol."""

    def __init__(self, task: str | MetaWorldTask, resolution: int = 64, camera: str = DEFAULT_CAMERA,
                 max_steps: int | None = None, images: bool = True,
                 render: RenderSettings = RenderSettings()) -> None:
        self.task = task if isinstance(task, MetaWorldTask) else get_task(task)
        if camera not in CAMERAS:
            from core.errors import unknown

            raise ValueError(unknown("camera", camera, CAMERAS))
        if not 16 <= resolution <= 512:
            raise ValueError(f"resolution must be in [16, 512] px, got {resolution}")
        self.resolution, self.camera, self.images = int(resolution), camera, images
        self.max_steps = int(max_steps or self.task.max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if images:
            _check_no_tensorflow()  # before importing MuJoCo, which would fix the GL platform for this process
        mujoco = _import_mujoco()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        env = ALL_V3_ENVIRONMENTS[self.task.name]()
        # goal-observable, seeded task variation: what metaworld's *-goal-observable classes do, with the random
        # vector drawn from the env's own seeded generator instead of the global numpy one
        env._partially_observable = False
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        if "sawyer_observation_space" in vars(env):  # cached with the goal hidden: step() would clip the goal to 0
            del env.sawyer_observation_space
        env.max_path_length = max(env.max_path_length, self.max_steps)
        self._env = env
        self._renderer = None
        if images:
            env.model.vis.quality.offsamples = render.multisamples
            try:
                self._renderer = mujoco.Renderer(env.model, self.resolution, self.resolution)
            except Exception as e:  # any GL failure means the same to the user
                raise _render_error(e) from None
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = render.shadows
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = render.reflections
        self._raw = np.zeros(39)
        self.steps, self.success, self.progress, self.seed = 0, False, 0.0, None

    # ------------------------------------------------------------------------------------------------ protocol
    def reset(self, seed: int) -> tuple[dict, dict]:
        """Start an episode whose object/goal positions are a function of ``seed`` (an int in [0, 2**32))."""
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.seed = int(seed)
        self._env.seed(self.seed)
        self._raw, _ = self._env.reset()
        self.steps, self.success, self.progress = 0, False, 0.0
        return self._obs(), {"instruction": self.task.instruction(self.seed), "task": self.task.name}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """action f[4] in [-1, 1]: xyz hand motion (x 1/100 m per step) and gripper effort (+1 closes)."""
        a = np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0)
        self._raw, reward, _, _, info = self._env.step(a)
        self.steps += 1
        self.success = self.success or bool(info["success"])
        self.progress = max(self.progress, 1.0 if self.success else float(reward) / 10.0)  # rewards are in [0, 10]
        truncated = self.steps >= self.max_steps and not self.success
        return self._obs(), float(reward), self.success, truncated, dict(info)

    @property
    def hand_pos(self) -> np.ndarray:
        """f32[3] end-effector position (metres, world frame)."""
        return self._raw[:3].astype(np.float32)

    @property
    def hand_pixel(self) -> np.ndarray:
        """f32[2] (x, y) of ``hand_pos`` in pixels of the stored image (``project_points``), from the live model's
        camera: its pose as computed by the last physics step, which is what ``render`` draws from."""
        m, d = self._env.model, self._env.data
        cam = m.camera(self.camera).id
        if np.any(m.cam_sensorsize[cam] > 0):  # intrinsics given as sensor size + focal length: not a fovy camera
            raise ValueError(f"camera {self.camera!r} has a sensor size set: expected a fovy camera")
        return project_points(self.hand_pos, d.cam_xpos[cam], d.cam_xmat[cam], float(m.cam_fovy[cam]),
                              self.resolution)[0]

    @property
    def raw_obs(self) -> np.ndarray:
        return self._raw

    def render(self) -> np.ndarray:
        """uint8[R, R, 3] from the fixed camera (the renderer is reused)."""
        if self._renderer is None:
            return np.zeros((self.resolution, self.resolution, 3), np.uint8)
        _check_no_tensorflow()  # TF imported after the renderer was made: still a segfault on the next frame
        self._renderer.update_scene(self._env.data, camera=self.camera)
        # Meta-World's corner cameras look at the table upside down (their "up" axis points at the floor): flip rows
        return np.ascontiguousarray(self._renderer.render()[::-1])

    def _obs(self) -> dict:
        return {"image": self.render(), "state": self._raw[:4].astype(np.float32), "raw": self._raw.copy()}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()


def _policy_class_name(task: str) -> str:
    return "Sawyer" + "".join(w.capitalize() for w in task.split("-")[:-1]) + "V3Policy"


class ScriptedExpert:
    """Meta-World's hand-written policy for a task plus seeded Gaussian action noise (clipped to [-1, 1])."""

    def __init__(self, task: str, noise: float = EXPERT_NOISE) -> None:
        from metaworld import policies

        self.task, self.noise = task, float(noise)
        self._policy = getattr(policies, _policy_class_name(task))()
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        a = np.asarray(self._policy.get_action(raw_obs), np.float64)
        if self.noise > 0:
            a = a + self._rng.normal(0.0, self.noise, a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def generate_episode(env: MetaWorldEnv, seed: int, noise: float, with_actions: bool) -> dict[str, Any]:
    """Roll out the noisy scripted expert from ``seed`` until success or the step limit; the RLDS example.

    Runs where the env renders, i.e. in the render worker (data/metaworld/worker.py) when TensorFlow is loaded here.
    """
    expert = ScriptedExpert(env.task.name, noise=noise)
    obs, info = env.reset(seed=seed)
    expert.reset(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    steps: list[dict[str, Any]] = []
    while True:
        done = env.success or env.steps >= env.max_steps
        action = np.zeros(4, np.float32) if done else expert.act(obs["raw"])
        hand = env.hand_pos
        step = {"observation": {"image": obs["image"]}, "discount": np.float32(1.0), "is_first": not steps,
                "is_last": done, "is_terminal": done and env.success, "language_instruction": info["instruction"],
                "ground_truth": {"hand_pos": hand, "hand_motion": np.zeros(3, np.float32),
                                 "hand_pixel": env.hand_pixel, "object_pos": obs["raw"][4:7].astype(np.float32)}}
        if with_actions:
            step["observation"]["state"] = obs["state"]
            step["action"] = action
        steps.append(step)
        if done:
            step["reward"] = np.float32(0.0)
            break
        obs, reward, _, _, _ = env.step(action)
        step["reward"] = np.float32(reward)
        step["ground_truth"]["hand_motion"] = env.hand_pos - hand
    return {"steps": steps, "episode_metadata": {"seed": np.int64(seed), "task": env.task.name,
                                                 "success": env.success, "episode_id": f"{seed:010d}"}}
