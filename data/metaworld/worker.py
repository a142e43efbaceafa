"""Meta-World rendering in a child process that never imports TensorFlow.

MuJoCo's off-screen EGL rendering (Mesa llvmpipe here) segfaults in any process that has imported TensorFlow, before
or after the renderer was created. The RLDS writer needs TFDS and a trained policy loads TF-using modules, so every
MuJoCo render happens here instead: ``Worker`` starts ``python -m data.metaworld.worker`` (``subprocess.Popen`` with
``sys.executable``, not multiprocessing's spawn/forkserver, which would re-import the parent's ``__main__`` and could
pull TensorFlow into the child) and talks to it over a private socket pair inherited through ``pass_fds``.

    with Worker() as w:
        env = RemoteEnv(w, "reach-v3", resolution=64)       # the MetaWorldEnv interface, backed by the worker
        obs, info = env.reset(seed=3); obs, r, term, trunc, info = env.step(action)
        ep = env.episode(seed=3, noise=0.1, with_actions=True)   # a whole RLDS episode generated in the child

Trust: messages are pickled ``multiprocessing.connection.Connection`` objects. That is safe only because both ends are
our own processes on an anonymous socket pair (nothing else can connect); never point this at another peer.
Lifetime: the child owns one ``MetaWorldEnv`` (one reused renderer) per ``make`` and exits on EOF, i.e. when the
parent closes its end or dies (and, on Linux, on the parent's death signal); ``Worker.close`` (also run at exit)
asks it to stop, then terminates it. The child refuses ``import tensorflow`` outright so a stray import fails with an
ImportError instead of a segfault. An error in the child comes back as one line (``RenderError`` still names
``MUJOCO_GL``); a crashed child is reported with its exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from data.metaworld.env import DEFAULT_CAMERA, RenderError, RenderSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ERRORS: dict[str, type[Exception]] = {"RenderError": RenderError, "ValueError": ValueError,
                                       "UserError": ValueError}


class WorkerError(RuntimeError):
    """The render worker died or failed in an unexpected way."""


# ------------------------------------------------------------------------------------------------ parent side
def _stop(proc: subprocess.Popen, conn: Connection) -> None:
    """Ask the child to exit (EOF), then terminate / kill it; idempotent."""
    with contextlib.suppress(OSError):
        conn.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Worker:
    """One render child process; ``call(op, *args)`` runs a request there and returns its (unpickled) result."""

    def __init__(self, mujoco_gl: str | None = None) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        if mujoco_gl is not None:  # an explicit backend; MuJoCo derives PyOpenGL's platform from it
            env["MUJOCO_GL"] = mujoco_gl
            env.pop("PYOPENGL_PLATFORM", None)
        env.setdefault("MUJOCO_GL", "egl")  # off-screen without a display
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)  # this checkout's code
        self.proc = subprocess.Popen([sys.executable, "-m", "data.metaworld.worker", str(theirs.fileno()),
                                      str(os.getpid())], pass_fds=(theirs.fileno(),), env=env, cwd=ROOT,
                                     stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.conn)  # also runs at interpreter exit

    def call(self, op: str, *args: Any) -> Any:
        if not self._finalizer.alive:
            raise WorkerError("the Meta-World render worker was closed")
        try:
            self.conn.send((op, args))
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            try:
                code = self.proc.wait(timeout=10)
                why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            except subprocess.TimeoutExpired:  # the pipe broke but the process lingers: close() terminates it
                why = "its pipe broke"
            self.close()
            raise WorkerError(f"the Meta-World render worker died ({why}) during {op!r}; its stderr is above") from None
        if status == "error":
            kind, message = payload
            raise _ERRORS.get(kind, WorkerError)(message if kind in _ERRORS else f"{kind}: {message}")
        return payload

    def cpu_seconds(self) -> float:
        """The child's own CPU time so far (user + system), for frames-per-CPU-second figures."""
        return float(self.call("cpu"))

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RemoteEnv:
    """``MetaWorldEnv``'s interface (reset / step / render / success / progress / steps / hand_pos / raw_obs) with
    the env living in ``worker``. State read by properties is cached from the last reply (no extra round trips)."""

    def __init__(self, worker: Worker, task: str, resolution: int = 64, camera: str = DEFAULT_CAMERA,
                 max_steps: int | None = None, images: bool = True, render: RenderSettings = RenderSettings()) -> None:
        from data.metaworld.tasks import get_task

        self.task = get_task(task)  # the "did you mean" error here, before a round trip
        self.worker, self.resolution, self.camera, self.images = worker, int(resolution), camera, images
        self._key, self.max_steps = worker.call("make", self.task.name, resolution, camera, max_steps, images,
                                                (render.shadows, render.reflections, render.multisamples))
        self._raw = np.zeros(39)
        self.steps, self.success, self.progress, self.seed = 0, False, 0.0, None

    def _update(self, state: dict) -> None:
        self._raw, self.steps, self.success = state["raw"], state["steps"], state["success"]
        self.progress, self.seed = state["progress"], state["seed"]

    def reset(self, seed: int) -> tuple[dict, dict]:
        obs, info, state = self.worker.call("reset", self._key, int(seed))
        self._update(state)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        (obs, reward, terminated, truncated, info), state = self.worker.call(
            "step", self._key, np.asarray(action, np.float32))
        self._update(state)
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        return self.worker.call("render", self._key)

    def episode(self, seed: int, noise: float, with_actions: bool) -> dict[str, Any]:
        """``env.generate_episode`` run in the worker: the noisy expert's RLDS episode (numpy arrays only)."""
        return self.worker.call("episode", self._key, int(seed), float(noise), bool(with_actions))

    @property
    def hand_pos(self) -> np.ndarray:
        return self._raw[:3].astype(np.float32)

    @property
    def raw_obs(self) -> np.ndarray:
        return self._raw

    def close(self) -> None:
        if self.worker._finalizer.alive:
            self.worker.call("close", self._key)


# ------------------------------------------------------------------------------------------------- child side
def _state(env: Any) -> dict:
    return {"raw": env.raw_obs.copy(), "steps": env.steps, "success": env.success, "progress": env.progress,
            "seed": env.seed}


def _serve(conn: Connection) -> None:
    from data.metaworld import env as env_lib

    envs: dict[int, env_lib.MetaWorldEnv] = {}
    while True:
        try:
            op, args = conn.recv()
        except EOFError:  # the parent closed its end or died
            break
        try:
            if op == "make":
                task, resolution, camera, max_steps, images, (shadows, reflections, samples) = args
                env = env_lib.MetaWorldEnv(task, resolution, camera, max_steps, images,
                                           env_lib.RenderSettings(shadows, reflections, samples))
                key = len(envs)
                envs[key] = env
                result: Any = (key, env.max_steps)
            elif op == "cpu":
                result = time.process_time()
            elif op == "close":
                envs.pop(args[0]).close()
                result = None
            else:
                if op not in ("reset", "step", "render", "episode"):
                    raise ValueError(f"unknown worker request {op!r}")
                if args[0] not in envs:
                    raise ValueError(f"no env {args[0]!r} in the render worker (closed or never made)")
                env = envs[args[0]]
                if op == "reset":
                    result = (*env.reset(args[1]), _state(env))
                elif op == "step":
                    result = (env.step(args[1]), _state(env))
                elif op == "render":
                    result = env.render()
                else:
                    result = env_lib.generate_episode(env, *args[1:])
            reply = ("ok", result)
        except Exception as e:  # one line back to the parent; the worker keeps serving
            lines = str(e).strip().splitlines()
            reply = ("error", (type(e).__name__, lines[0] if lines else type(e).__name__))
        try:
            conn.send(reply)
        except OSError:
            break
    for env in envs.values():
        env.close()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGTERM when the parent dies (covers a parent killed while we are busy, not reading)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)


def main(argv: list[str]) -> None:
    fd, parent_pid = int(argv[0]), int(argv[1])
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # rendering segfaults once TF is loaded: refuse it
    os.environ.setdefault("MUJOCO_GL", "egl")
    _die_with_parent(parent_pid)
    conn = Connection(fd)
    try:
        _serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
