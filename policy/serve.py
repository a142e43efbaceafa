"""HTTP policy server (FastAPI/uvicorn): observation + instruction -> de-normalized action chunk.

    python -m policy.serve --checkpoint RUN_DIR [--step N] [--host 127.0.0.1] [--port 8000] [--gripper clip]

Module layout: ``policy/payload.py`` decodes and validates request bodies, ``policy/limits.py`` holds the resource
limits (ASGI middleware + uvicorn protocol), ``policy/metadata.py`` the typed metadata record; this file is the app
and its command line.

Endpoints (every error is JSON ``{"error": message, "field": name-or-null, "expected": text-or-null, "status": code}``):

- ``GET /health`` -> ``{"ok": true, "warm": bool, "requests": n, "errors": n, "pending": n, "uptime_s": s}``
  (``requests``/``errors``: /act calls that reached the handler; ``pending``: /act calls queued or running in the
  policy). Never waits for the policy, so it answers while an ``/act`` is running.
- ``GET /metadata`` -> the policy's metadata record (``policy/metadata.py``: ``image_size`` R, ``history_offsets``
  (W = their number), ``action_dim`` A, ``chunk`` H, ``recipe``, ``gripper``, ...) plus ``"server"``: the accepted
  encodings and the limits below.
- ``POST /reset`` (body ignored) -> ``{"ok": true}``; calls ``policy.reset()``. Call it at the start of each episode.
- ``POST /act`` -> ``{"actions": H x A floats, "chunk": H, "action_dim": A, "latency_ms": time inside policy.act,
  "queue_ms": time waiting for the policy thread, "server_ms": total time in the server (decode + queue + act)}``.
  ``actions`` are **de-normalized** (robot units, the checkpoint's action statistics already applied); row 0 is the
  action for the current step. Three request encodings:

  1. ``application/json``: ``{"instruction": str, "seed": int (optional, default 0)}`` plus exactly one of
     ``"images"``: nested lists W x R x R x 3 of integers 0..255, or ``"image_b64_jpeg"``: a list of W base64 strings,
     each a JPEG (or PNG) file of R x R RGB pixels.
  2. ``multipart/form-data`` with fields ``instruction``, optional ``seed``, and files ``image0`` .. ``image{W-1}``
     (JPEG or PNG, R x R, RGB).
  3. ``multipart/form-data`` with fields ``instruction``, optional ``seed``, and one file ``npz``: an ``.npz`` (or
     ``.npy``) holding ``images`` uint8[W, R, R, 3]; loaded with ``allow_pickle=False``. Fastest and lossless.

  A policy with the effector state as input (metadata ``proprio_dim`` P > 0) also needs ``proprio``: the raw state
  (the dataset's units, P to 8 numbers) as a JSON list, in the JSON body or as a multipart field; any other policy
  refuses it (422). ``policy/payload.py`` has the rules.

  Frames are ordered oldest first, i.e. frame i is the observation at ``history_offsets[i]`` relative to now
  (e.g. offsets [-2, 0]: frame t-2 then frame t).

Validation decisions:

- **Images of another size are rejected (422 naming R), not resized.** The resize/crop that turns a camera frame into
  an R x R model input is part of the training-time transform; a silent server-side resize with a different filter,
  crop or aspect handling is the train/serve mismatch ViPRA's server had. The client owns that transform.
- Images must be 8-bit RGB: JSON integers in 0..255 (floats, NaN, booleans-only, strings, nulls, ragged lists are
  rejected), npz arrays of dtype uint8 exactly, JPEG/PNG files in mode RGB (grayscale, RGBA, palette, 16-bit are
  rejected rather than silently converted).
- ``instruction``: a non-blank string of at most ``max_instruction_chars`` characters. ``seed``: an integer in
  [0, 2**32). Unknown fields are rejected (a typo such as ``task_description`` must not silently be ignored).
- ``instruction`` must be valid Unicode without NUL (a lone surrogate such as JSON ``"\\ud800"`` -> 422, not 500).
- Limits (``policy/limits.py``; flags ``--max-body-mb`` ``--max-buffered-mb`` ``--max-concurrent``
  ``--body-timeout`` ``--header-timeout``): a body over ``max_body_bytes`` -> 413 (by declared Content-Length before
  reading, or by counting chunked bytes); a JSON body larger than any valid request for this policy -> 413; more
  than ``max_concurrent`` requests in flight, or bodies beyond ``max_buffered_bytes`` held at once -> 503 with
  ``Retry-After`` (the client retries these); a body not received within ``body_timeout_s`` -> 408 and the
  connection is closed; a connection without a request head after ``header_timeout_s`` is closed. ``GET``
  requests (``/health``, ``/metadata``) are never limited. More than ``max_queue`` requests waiting for the policy
  -> 503 as well. Too many files / wrong file names -> 422. Unparseable JSON or multipart -> 400. Any other content
  type -> 415.
- A policy exception -> 500 with its message; the server keeps serving. Non-finite or wrongly shaped policy output
  -> 500 as well (never NaN in a JSON answer).

Concurrency: every policy call (``act``, ``reset``, ``warmup``) runs on one dedicated worker thread, in arrival
order, so latency is predictable and the policy needs no locking; decoding runs in the thread pool, so ``/health``
stays responsive. No global state: everything lives in the app. Nothing is written to disk (multipart bodies are
parsed in memory). The server has no authentication and binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from policy.limits import LimitCounters, LimitsMiddleware, ServerLimits, uvicorn_config
from policy.metadata import GRIPPER_MODES, PolicyMetadata
from policy.payload import (
    DEFAULT_MAX_INSTRUCTION_CHARS,
    ENCODINGS,
    APIError,
    Spec,
    check_json_size,
    parse_json_act,
    parse_multipart_act,
)

log = logging.getLogger("policy.serve")

API_VERSION = 1
DEFAULT_MAX_BODY_BYTES = ServerLimits().max_body_bytes


class PolicyLike(Protocol):
    """What the server needs from a policy (``policy.policy.Policy`` implements it)."""

    def metadata(self) -> dict: ...

    def reset(self) -> None: ...

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray: ...

    def warmup(self) -> None: ...


def _error_response(err: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# ----------------------------------------------------------------------------------------------------------------------
# The app


class _PolicyRunner:
    """Runs every policy call on one worker thread, in arrival order."""

    def __init__(self, policy: PolicyLike):
        self.policy = policy
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def call(self, fn: Callable, *args, **kwargs) -> tuple[Any, float]:
        """Runs ``fn`` on the worker thread; returns (its result, seconds it ran, not counting the queue wait)."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="policy")
            executor = self._executor

        def timed():
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            return out, time.perf_counter() - t0

        return await asyncio.get_running_loop().run_in_executor(executor, timed)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)



def create_app(
    policy: PolicyLike,
    *,
    limits: ServerLimits | None = None,
    max_body_bytes: int | None = None,
    max_instruction_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS,
    max_queue: int = 64,
    warmup: bool = True,
) -> FastAPI:
    """Builds the app around ``policy``. ``warmup``: call ``policy.warmup()`` at startup (before uvicorn listens).

    ``limits``: see ``policy/limits.py`` (default ``ServerLimits()``); ``max_body_bytes`` overrides its body cap
    (raising ``max_buffered_bytes`` to match if needed). ``max_queue``: /act requests waiting for or running in the
    policy beyond this get 503. The limits are kept as ``app.state.limits`` for :func:`serve_in_thread`.
    """
    limits = limits or ServerLimits()
    if max_body_bytes is not None:
        limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes,
                                     max_buffered_bytes=max(limits.max_buffered_bytes, max_body_bytes))
    record = PolicyMetadata.from_dict(policy.metadata())  # fails at creation, not per request
    meta = record.to_dict()
    json.dumps(meta)
    spec = Spec(record, max_instruction_chars)
    runner = _PolicyRunner(policy)
    counters = LimitCounters()
    state = {"warm": False, "requests": 0, "errors": 0, "pending": 0, "started": time.time()}
    server_info = {
        "api_version": API_VERSION,
        "encodings": list(ENCODINGS),
        "images": {"shape": list(spec.shape), "dtype": "uint8", "order": "oldest frame first"},
        **limits.describe(),
        "max_json_bytes": spec.max_json_bytes,
        "max_instruction_chars": max_instruction_chars,
        "max_queue": max_queue,
        "actions": "de-normalized (robot units), shape [chunk, action_dim], row 0 = current step",
        "resize": f"none: images must already be {spec.R} x {spec.R}",
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if warmup:
            t0 = time.perf_counter()
            await runner.call(policy.warmup)
            state["warm"] = True
            log.info("policy warm-up took %.1f s", time.perf_counter() - t0)
        try:
            yield
        finally:
            runner.shutdown()

    app = FastAPI(title="latent-vla policy server", version=str(API_VERSION), lifespan=lifespan)
    app.state.policy_state = state
    app.state.limits = limits

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error_response(exc, {"Retry-After": str(limits.retry_after_s)} if exc.status == 503 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(APIError(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error_response(APIError(422, str(exc.errors())[:500]))

    @app.get("/health")
    async def health() -> dict:
        """Liveness: ok, whether the policy is compiled (warm), counters. Never waits for the policy."""
        return {
            "ok": True,
            "warm": state["warm"],
            "requests": state["requests"],
            "errors": state["errors"],
            "pending": state["pending"],
            "in_flight": counters.in_flight,
            "buffered_bytes": counters.buffered,
            "peak_in_flight": counters.peak_in_flight,
            "peak_buffered_bytes": counters.peak_buffered,
            "rejected": dict(counters.rejected),
            "uptime_s": round(time.time() - state["started"], 3),
        }

    @app.get("/metadata")
    async def metadata() -> dict:
        """The policy's metadata (image_size, history_offsets, action_dim, chunk, recipe, ...) plus server limits."""
        return {**meta, "server": server_info}

    @app.post("/reset")
    async def reset() -> dict:
        """Resets the policy's per-episode state (call at the start of each episode). The body is ignored."""
        try:
            await runner.call(policy.reset)
        except Exception as e:
            log.exception("policy.reset failed")
            raise APIError(500, f"policy.reset failed: {type(e).__name__}: {e}") from None
        return {"ok": True}

    proprio_doc = ({"proprio": {"type": "array", "items": {"type": "number"}, "minItems": spec.P, "maxItems": 8,
                                "description": "the raw effector state (required: this policy's proprio_dim > 0)"}}
                   if spec.P else {})
    act_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["instruction", *(["proprio"] if spec.P else [])],
                        "properties": {
                            "instruction": {"type": "string", "maxLength": max_instruction_chars},
                            "seed": {"type": "integer", "minimum": 0, "default": 0},
                            **proprio_doc,
                            "images": {"description": f"W x R x R x 3 integers 0..255, shape {list(spec.shape)}"},
                            "image_b64_jpeg": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": f"{spec.W} base64 JPEG/PNG files",
                            },
                        },
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["instruction"],
                        "properties": {
                            "instruction": {"type": "string"},
                            "seed": {"type": "integer"},
                            **({"proprio": {"type": "string", "description": "the proprio JSON list"}}
                               if spec.P else {}),
                            "npz": {"type": "string", "format": "binary", "description": "npz with 'images'"},
                            **{n: {"type": "string", "format": "binary"} for n in spec.image_names},
                        },
                    }
                },
            },
        }
    }

    @app.post("/act", openapi_extra=act_doc)
    async def act(request: Request) -> JSONResponse:
        """Observation window + instruction -> de-normalized action chunk ``actions`` [chunk, action_dim].

        See the module docstring for the three request encodings.
        """
        t0 = time.perf_counter()
        state["requests"] += 1
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type not in ("application/json", "multipart/form-data"):
                raise APIError(
                    415,
                    f"unsupported content type {media_type or '(none)'!r}",
                    field="Content-Type",
                    expected="application/json or multipart/form-data",
                )
            if media_type == "application/json" and request.headers.get("content-length", "").isdigit():
                check_json_size(int(request.headers["content-length"]), spec)  # before reading it
            try:
                body = await request.body()
            except ClientDisconnect:  # gone mid-body: nobody to answer, and not worth a traceback in the log
                raise APIError(400, "client disconnected before the end of the body", field="body") from None
            if not body:
                raise APIError(400, "empty request body", field="body", expected="a JSON object or a multipart form")
            if media_type == "application/json":
                images, instruction, seed, proprio = await asyncio.to_thread(parse_json_act, body, spec)
            else:
                content_type = request.headers["content-type"]
                images, instruction, seed, proprio = await asyncio.to_thread(
                    parse_multipart_act, body, content_type, spec)
            kw = {} if proprio is None else {"proprio": proprio}  # only a state-input policy gets (and needs) it
            if state["pending"] >= max_queue:
                raise APIError(503, f"server busy: {state['pending']} requests queued (max_queue={max_queue})")
            state["pending"] += 1
            try:
                t1 = time.perf_counter()
                try:
                    # np.asarray inside the worker: with JAX's async dispatch, the time then includes the device
                    # computation and the device->host copy, and the event loop never blocks on a device array
                    actions, run_s = await runner.call(
                        lambda: np.asarray(policy.act(images, instruction, seed=seed, **kw), dtype=np.float32)
                    )
                except Exception as e:
                    log.exception("policy.act failed")
                    raise APIError(500, f"policy.act failed: {type(e).__name__}: {e}") from None
                latency_ms, queue_ms = run_s * 1e3, (time.perf_counter() - t1 - run_s) * 1e3
            finally:
                state["pending"] -= 1
            if actions.shape != (spec.H, spec.A):
                raise APIError(
                    500, f"policy returned actions of shape {list(actions.shape)}, metadata says [{spec.H}, {spec.A}]"
                )
            if not np.isfinite(actions).all():
                raise APIError(500, "policy returned non-finite actions")
            state["warm"] = True
        except APIError as e:
            state["errors"] += 1
            return _error_response(e, {"Retry-After": str(limits.retry_after_s)} if e.status == 503 else None)
        return JSONResponse(
            {
                "actions": actions.astype(np.float64).tolist(),
                "chunk": spec.H,
                "action_dim": spec.A,
                "latency_ms": latency_ms,
                "queue_ms": queue_ms,
                "server_ms": (time.perf_counter() - t0) * 1e3,
            }
        )

    app.add_middleware(LimitsMiddleware, limits=limits, counters=counters)
    return app


# ----------------------------------------------------------------------------------------------------------------------
# Running


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Runs ``app`` under uvicorn in a background thread with the app's limits (``app.state.limits``, see
    :func:`create_app`); yields its base URL (``port=0``: a free port)."""
    import uvicorn

    limits = getattr(app.state, "limits", None) or ServerLimits()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, limits, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="fine-tuning run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; there is no auth)")
    p.add_argument("--port", type=int, default=8000)
    d = ServerLimits()
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20, help="one request body (413)")
    p.add_argument("--max-buffered-mb", type=float, default=d.max_buffered_bytes / 2**20,
                   help="all request bodies held at once (503 + Retry-After beyond)")
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent,
                   help="requests in flight, GET excepted (503 + Retry-After beyond)")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s, help="seconds to receive a body (408)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds from connecting to a complete request head (then the connection is closed)")
    p.add_argument("--keep-alive", type=float, default=d.keep_alive_s, help="idle seconds before closing")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for the policy (503 beyond)")
    p.add_argument("--max-instruction-chars", type=int, default=DEFAULT_MAX_INSTRUCTION_CHARS)
    p.add_argument("--gripper", choices=GRIPPER_MODES, default=None,
                   help="gripper post-processing (default: the checkpoint's choice, else clip to the dataset range)")
    p.add_argument("--gripper-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="gripper range (default: min/max of the normalization statistics)")
    p.add_argument("--log-level", default="info", type=str.lower,
                   choices=("debug", "info", "warning", "error", "critical"))
    return p


def check_limit_flags(args: argparse.Namespace) -> None:
    """The limit flags as the user wrote them (`ServerLimits` checks the same in bytes and field names)."""
    from core.errors import UserError

    for flag in ("max_body_mb", "max_buffered_mb", "max_concurrent", "body_timeout", "header_timeout", "keep_alive"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.max_buffered_mb < args.max_body_mb:
        raise UserError(f"--max-buffered-mb {args.max_buffered_mb:g} must be >= --max-body-mb {args.max_body_mb:g} "
                        "(all bodies held at once must fit one of the largest): raise --max-buffered-mb too")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_limit_flags(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * 2**20),
                          max_buffered_bytes=int(args.max_buffered_mb * 2**20), max_concurrent=args.max_concurrent,
                          body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                          keep_alive_s=args.keep_alive)  # validated before the (slow) checkpoint load
    from policy.policy import Policy  # imported here: the server module itself never needs JAX

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the policy server has no authentication", args.host)
    t0 = time.perf_counter()
    policy = Policy.from_checkpoint(args.checkpoint, args.step, gripper=args.gripper,
                                    gripper_range=args.gripper_range)
    log.info("loaded %s (step %s) in %.1f s", args.checkpoint, args.step, time.perf_counter() - t0)
    app = create_app(
        policy,
        limits=limits,
        max_queue=args.max_queue,
        max_instruction_chars=args.max_instruction_chars,
        warmup=True,  # runs in the lifespan startup, i.e. before uvicorn starts listening
    )
    uvicorn.Server(uvicorn_config(app, limits, host=args.host, port=args.port, log_level=args.log_level)).run()
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
