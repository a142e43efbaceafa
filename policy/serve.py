"""HTTP policy server (FastAPI/uvicorn): observation + instruction -> de-normalized action chunk.

    python -m policy.serve --checkpoint RUN_DIR [--step N] [--host 127.0.0.1] [--port 8000]

Endpoints (every error is JSON ``{"error": message, "field": name-or-null, "expected": text-or-null, "status": code}``):

- ``GET /health`` -> ``{"ok": true, "warm": bool, "requests": n, "errors": n, "pending": n, "uptime_s": s}``
  (``requests``/``errors``: /act calls that reached the handler; ``pending``: /act calls queued or running in the
  policy). Never waits for the policy, so it answers while an ``/act`` is running.
- ``GET /metadata`` -> the policy's metadata (``image_size`` R, ``history_offsets`` (W = their number), ``action_dim``
  A, ``chunk`` H, ``recipe``, ...) plus ``"server"``: the accepted encodings and the limits below.
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
- Bodies over ``max_body_bytes`` get 413, both by declared Content-Length (before reading) and by counting streamed
  bytes (chunked uploads). Too many files / wrong file names -> 422. Unparseable JSON or multipart -> 400. Any other
  content type -> 415. More than ``max_queue`` requests waiting for the policy -> 503 (the client retries these).
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
import base64
import binascii
import concurrent.futures
import contextlib
import io
import json
import logging
import math
import re
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("policy.serve")

API_VERSION = 1
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INSTRUCTION_CHARS = 1000
_SEED_RANGE = (0, 2**32)
_ENCODINGS = ("json:images", "json:image_b64_jpeg", "multipart:image{i}", "multipart:npz")
_IMAGE_FORMATS = ("JPEG", "PNG")


class PolicyLike(Protocol):
    """What the server needs from a policy (``policy.policy.Policy`` implements it)."""

    def metadata(self) -> dict: ...

    def reset(self) -> None: ...

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray: ...

    def warmup(self) -> None: ...


class APIError(Exception):
    """A request error answered as JSON ``{"error", "field", "expected", "status"}``."""

    def __init__(self, status: int, message: str, *, field: str | None = None, expected: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.expected = status, message, field, expected

    def response(self) -> JSONResponse:
        return _error_response(self.status, self.message, field=self.field, expected=self.expected)


def _error_response(status: int, message: str, *, field: str | None = None, expected: str | None = None, headers=None):
    body = {"error": message, "field": field, "expected": expected, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


# ----------------------------------------------------------------------------------------------------------------------
# Body-size limit (pure ASGI middleware: checks Content-Length up front and counts streamed bytes)


class _BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _error_response(400, "invalid Content-Length header", field="Content-Length")(
                        scope, receive, send
                    )
                if declared > limit:
                    msg = f"request body of {declared} bytes exceeds the limit of {limit} bytes"
                    return await _error_response(413, msg, field="body", expected=f"<= {limit} bytes")(
                        scope, receive, send
                    )
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise APIError(
                        413,
                        f"request body exceeds the limit of {limit} bytes",
                        field="body",
                        expected=f"<= {limit} bytes",
                    )
            return message

        return await self.app(scope, limited_receive, send)


# ----------------------------------------------------------------------------------------------------------------------
# Decoding and validation (pure functions of bytes -> arrays; run in the thread pool)


class _Spec:
    """What the policy expects, from its metadata."""

    def __init__(self, meta: dict, max_instruction_chars: int):
        try:
            self.R = int(meta["image_size"])
            self.W = len(meta["history_offsets"])
            self.A = int(meta["action_dim"])
            self.H = int(meta["chunk"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"policy metadata needs image_size, history_offsets, action_dim, chunk: {e!r}") from e
        if min(self.R, self.W, self.A, self.H) <= 0:
            raise ValueError(f"policy metadata has a non-positive size: {meta}")
        self.max_instruction_chars = max_instruction_chars

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.W, self.R, self.R, 3)

    @property
    def images_expected(self) -> str:
        return f"uint8 array of shape [{self.W}, {self.R}, {self.R}, 3] (W frames oldest first, R x R RGB, 0..255)"

    @property
    def image_names(self) -> list[str]:
        return [f"image{i}" for i in range(self.W)]


def _check_instruction(value: Any, spec: _Spec) -> str:
    expected = f"a non-blank string of at most {spec.max_instruction_chars} characters"
    if value is None:
        raise APIError(422, "missing field 'instruction'", field="instruction", expected=expected)
    if not isinstance(value, str):
        raise APIError(
            422, f"instruction must be a string, got {type(value).__name__}", field="instruction", expected=expected
        )
    if not value.strip():
        raise APIError(422, "instruction is empty", field="instruction", expected=expected)
    if len(value) > spec.max_instruction_chars:
        raise APIError(422, f"instruction has {len(value)} characters", field="instruction", expected=expected)
    if "\x00" in value:
        raise APIError(422, "instruction contains a NUL character", field="instruction", expected=expected)
    return value


def _check_seed(value: Any) -> int:
    lo, hi = _SEED_RANGE
    expected = f"an integer in [{lo}, {hi})"
    if value is None:
        return 0
    if isinstance(value, str):  # multipart fields are strings
        if not re.fullmatch(r"\s*[+-]?\d{1,20}\s*", value):
            raise APIError(422, f"seed must be an integer, got {value[:40]!r}", field="seed", expected=expected)
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise APIError(422, f"seed must be an integer, got {type(value).__name__}", field="seed", expected=expected)
    if not lo <= value < hi:
        raise APIError(422, f"seed {value} is out of range", field="seed", expected=expected)
    return value


def _check_images_array(arr: np.ndarray, spec: _Spec, field: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise APIError(422, f"{field} has dtype {arr.dtype}", field=field, expected=spec.images_expected)
    if arr.shape != spec.shape:
        raise APIError(422, f"{field} has shape {list(arr.shape)}", field=field, expected=spec.images_expected)
    return np.ascontiguousarray(arr)


def _images_from_lists(value: Any, spec: _Spec) -> np.ndarray:
    field, expected = "images", spec.images_expected
    if not isinstance(value, list):
        raise APIError(422, f"images must be nested lists, got {type(value).__name__}", field=field, expected=expected)
    if len(value) != spec.W:
        raise APIError(422, f"images has {len(value)} frames, expected W={spec.W}", field=field, expected=expected)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise APIError(
            422, f"images is not a rectangular array of numbers ({e})", field=field, expected=expected
        ) from None
    if arr.dtype.kind not in "iu":
        what = {"f": "floats (or NaN/Infinity)", "b": "booleans", "U": "strings", "O": "mixed/null/huge values"}
        got = what.get(arr.dtype.kind, str(arr.dtype))
        raise APIError(422, f"images must hold integers 0..255, got {got}", field=field, expected=expected)
    if arr.shape != spec.shape:
        raise APIError(422, f"images has shape {list(arr.shape)}", field=field, expected=expected)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise APIError(
            422, f"images values range over [{arr.min()}, {arr.max()}], outside 0..255", field=field, expected=expected
        )
    return arr.astype(np.uint8)


def _decode_image_file(data: bytes, spec: _Spec, field: str) -> np.ndarray:
    expected = f"a JPEG or PNG file of {spec.R} x {spec.R} RGB pixels (resize on the client; the server does not)"
    if not data:
        raise APIError(422, f"{field} is empty", field=field, expected=expected)
    try:
        img = Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise APIError(422, f"{field} is not a decodable JPEG/PNG ({e})", field=field, expected=expected) from None
    with img:
        if img.size != (spec.R, spec.R):  # checked from the header, before decoding any pixels
            w, h = img.size
            raise APIError(
                422, f"{field} is {w} x {h} pixels, expected {spec.R} x {spec.R}", field=field, expected=expected
            )
        if img.mode != "RGB":
            raise APIError(422, f"{field} has mode {img.mode}, expected RGB", field=field, expected=expected)
        try:
            img.load()
            arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise APIError(422, f"{field} is a corrupt {img.format} ({e})", field=field, expected=expected) from None
    if arr.shape != (spec.R, spec.R, 3):
        raise APIError(422, f"{field} decoded to shape {list(arr.shape)}", field=field, expected=expected)
    return arr


def _images_from_b64(value: Any, spec: _Spec) -> np.ndarray:
    field = "image_b64_jpeg"
    expected = f"a list of W={spec.W} base64 strings, each a JPEG/PNG of {spec.R} x {spec.R} RGB pixels"
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise APIError(422, "image_b64_jpeg must be a list of strings", field=field, expected=expected)
    if len(value) != spec.W:
        raise APIError(
            422, f"image_b64_jpeg has {len(value)} images, expected W={spec.W}", field=field, expected=expected
        )
    frames = []
    for i, s in enumerate(value):
        name = f"{field}[{i}]"
        try:
            data = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError) as e:
            raise APIError(422, f"{name} is not valid base64 ({e})", field=name, expected=expected) from None
        frames.append(_decode_image_file(data, spec, name))
    return np.stack(frames)


def _npy_header(fp) -> tuple[tuple[int, ...], np.dtype]:
    """Reads an .npy header (shape, dtype) without reading the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(shape), dtype


def _load_npz(data: bytes, spec: _Spec) -> np.ndarray:
    field, expected = "npz", f"an .npz with key 'images' holding a {spec.images_expected} (or a plain .npy)"
    expected_bytes = spec.W * spec.R * spec.R * 3

    def check_header(fp) -> None:  # before reading (or inflating) any data: errors name the real problem
        shape, dtype = _npy_header(fp)
        if dtype.hasobject:
            msg = "npz:images holds Python objects (pickles are refused)"
            raise APIError(422, msg, field="npz:images", expected=spec.images_expected)
        if dtype != np.uint8 or shape != spec.shape:
            raise APIError(
                422, f"npz:images is {dtype}{list(shape)}", field="npz:images", expected=spec.images_expected
            )

    try:
        if data[:6] == b"\x93NUMPY":
            check_header(io.BytesIO(data))
            npy = data
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
                if "images.npy" not in names:
                    keys = [n.removesuffix(".npy") for n in names][:10]
                    raise APIError(422, f"npz has keys {keys}, no 'images'", field=field, expected=expected)
                with zf.open("images.npy") as member:
                    check_header(member)
                if zf.getinfo("images.npy").file_size > expected_bytes + 4096:  # zip-bomb guard
                    raise APIError(422, "npz 'images' holds trailing data", field=field, expected=expected)
                npy = zf.read("images.npy")
        arr = np.load(io.BytesIO(npy), allow_pickle=False)
    except APIError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
        raise APIError(
            422, f"npz is not a readable .npz/.npy ({type(e).__name__}: {e})", field=field, expected=expected
        ) from None
    if not isinstance(arr, np.ndarray):
        raise APIError(422, "npz did not hold an array", field=field, expected=expected)
    return _check_images_array(arr, spec, "npz:images")


def _parse_json_act(body: bytes, spec: _Spec) -> tuple[np.ndarray, str, int]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(
            400, f"body is not valid JSON ({type(e).__name__}: {str(e)[:200]})", field="body", expected="a JSON object"
        ) from None
    if not isinstance(payload, dict):
        raise APIError(
            422,
            f"JSON body must be an object, got {type(payload).__name__}",
            field="body",
            expected='{"instruction": str, "images" | "image_b64_jpeg": ..., "seed": int}',
        )
    allowed = {"instruction", "seed", "images", "image_b64_jpeg"}
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise APIError(422, f"unknown field(s) {unknown[:5]}", field=unknown[0], expected=f"only {sorted(allowed)}")
    instruction = _check_instruction(payload.get("instruction"), spec)
    seed = _check_seed(payload.get("seed"))
    has_lists, has_b64 = "images" in payload, "image_b64_jpeg" in payload
    if has_lists == has_b64:
        raise APIError(
            422, "give exactly one of 'images' and 'image_b64_jpeg'", field="images", expected=spec.images_expected
        )
    images = (
        _images_from_lists(payload["images"], spec) if has_lists else _images_from_b64(payload["image_b64_jpeg"], spec)
    )
    return images, instruction, seed


_MAX_PARTS = 16
_MAX_FIELD_BYTES = 64 * 1024


def _split_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """Parses a multipart/form-data body held in memory -> [(name, filename or None, data)]. Nothing touches disk."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(
            400,
            "multipart content type without a boundary",
            field="Content-Type",
            expected="multipart/form-data; boundary=...",
        )
    parts: list[tuple[dict[bytes, bytes], bytes]] = []
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        cur.update(headers={}, data=[], name=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        cur["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        cur["value"] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][cur["name"].lower()] = cur["value"]
        cur["name"] = cur["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((cur["headers"], b"".join(cur["data"])))
        if len(parts) > _MAX_PARTS:
            raise APIError(422, f"more than {_MAX_PARTS} multipart parts", field="body")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as e:
        raise APIError(400, f"malformed multipart body ({e})", field="body") from None
    if not parts:
        raise APIError(400, "multipart body has no parts", field="body")
    out = []
    for headers, data in parts:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise APIError(400, "multipart part without a Content-Disposition name", field="body")
        name = opts[b"name"].decode("utf-8", "replace")
        filename = opts[b"filename"].decode("utf-8", "replace") if b"filename" in opts else None
        out.append((name, filename, data))
    return out


def _parse_multipart_act(body: bytes, content_type: str, spec: _Spec) -> tuple[np.ndarray, str, int]:
    files_expected = f"files {spec.image_names} (JPEG/PNG) or one file 'npz'"
    allowed_fields, allowed_files = {"instruction", "seed"}, {*spec.image_names, "npz"}
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for name, filename, data in _split_multipart(body, content_type):
        if name in fields or name in files:
            raise APIError(422, f"field {name!r} given more than once", field=name)
        if filename is not None:
            if name not in allowed_files:
                raise APIError(422, f"unexpected file {name!r}", field=name, expected=files_expected)
            files[name] = data
        else:
            if name not in allowed_fields:
                hint = " (send it as a file part)" if name in allowed_files else ""
                raise APIError(
                    422,
                    f"unexpected form field {name!r}{hint}",
                    field=name,
                    expected=f"fields {sorted(allowed_fields)} and {files_expected}",
                )
            if len(data) > _MAX_FIELD_BYTES:
                raise APIError(422, f"form field {name!r} has {len(data)} bytes", field=name)
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise APIError(422, f"form field {name!r} is not UTF-8", field=name) from None
    instruction = _check_instruction(fields.get("instruction"), spec)
    seed = _check_seed(fields.get("seed"))
    if "npz" in files:
        if len(files) > 1:
            extra = sorted(set(files) - {"npz"})
            raise APIError(422, f"got 'npz' together with {extra}", field="npz", expected=files_expected)
        images = _load_npz(files["npz"], spec)
    else:
        missing = [n for n in spec.image_names if n not in files]
        if missing:
            raise APIError(422, f"missing image file(s) {missing}", field=missing[0], expected=files_expected)
        images = np.stack([_decode_image_file(files[n], spec, n) for n in spec.image_names])
    return images, instruction, seed


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


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def create_app(
    policy: PolicyLike,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_instruction_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS,
    max_queue: int = 64,
    warmup: bool = True,
) -> FastAPI:
    """Builds the app around ``policy``. ``warmup``: call ``policy.warmup()`` at startup (before uvicorn listens).

    ``max_queue``: /act requests waiting for or running in the policy beyond this get 503.
    """
    meta = _jsonable(policy.metadata())
    json.dumps(meta)  # fail at creation, not per request, if the metadata is not JSON-able
    spec = _Spec(meta, max_instruction_chars)
    runner = _PolicyRunner(policy)
    state = {"warm": False, "requests": 0, "errors": 0, "pending": 0, "started": time.time()}
    server_info = {
        "api_version": API_VERSION,
        "encodings": list(_ENCODINGS),
        "images": {"shape": list(spec.shape), "dtype": "uint8", "order": "oldest frame first"},
        "max_body_bytes": max_body_bytes,
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

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error_response(422, str(exc.errors())[:500])

    @app.get("/health")
    async def health() -> dict:
        """Liveness: ok, whether the policy is compiled (warm), counters. Never waits for the policy."""
        return {
            "ok": True,
            "warm": state["warm"],
            "requests": state["requests"],
            "errors": state["errors"],
            "pending": state["pending"],
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

    act_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["instruction"],
                        "properties": {
                            "instruction": {"type": "string", "maxLength": max_instruction_chars},
                            "seed": {"type": "integer", "minimum": 0, "default": 0},
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
            body = await request.body()
            if not body:
                raise APIError(400, "empty request body", field="body", expected="a JSON object or a multipart form")
            if media_type == "application/json":
                images, instruction, seed = await asyncio.to_thread(_parse_json_act, body, spec)
            else:
                content_type = request.headers["content-type"]
                images, instruction, seed = await asyncio.to_thread(_parse_multipart_act, body, content_type, spec)
            if state["pending"] >= max_queue:
                raise APIError(503, f"server busy: {state['pending']} requests queued (max_queue={max_queue})")
            state["pending"] += 1
            try:
                t1 = time.perf_counter()
                try:
                    # np.asarray inside the worker: with JAX's async dispatch, the time then includes the device
                    # computation and the device->host copy, and the event loop never blocks on a device array
                    actions, run_s = await runner.call(
                        lambda: np.asarray(policy.act(images, instruction, seed=seed), dtype=np.float32)
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
            headers = {"Retry-After": "1"} if e.status == 503 else None
            return _error_response(e.status, e.message, field=e.field, expected=e.expected, headers=headers)
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

    app.add_middleware(_BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    return app


# ----------------------------------------------------------------------------------------------------------------------
# Running


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Runs ``app`` under uvicorn in a background thread; yields its base URL (``port=0``: a free port)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30))
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
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20)
    p.add_argument("--max-instruction-chars", type=int, default=DEFAULT_MAX_INSTRUCTION_CHARS)
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    from policy.policy import Policy  # imported here: the server module itself never needs JAX

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the policy server has no authentication", args.host)
    t0 = time.perf_counter()
    policy = Policy.from_checkpoint(args.checkpoint, args.step)
    log.info("loaded %s (step %s) in %.1f s", args.checkpoint, args.step, time.perf_counter() - t0)
    app = create_app(
        policy,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_instruction_chars=args.max_instruction_chars,
        warmup=True,  # runs in the lifespan startup, i.e. before uvicorn starts listening
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1, timeout_keep_alive=60)
    return 0


if __name__ == "__main__":
    from core import cli

    cli.run(main)
