"""Client for the policy server (``policy/serve.py``), and the load test used by ``scripts/serve_load_test.py``.

    client = PolicyClient("http://127.0.0.1:8000")
    meta = client.metadata()            # image_size R, history_offsets (W frames), action_dim A, chunk H, ...
    client.reset()                      # at the start of each episode
    actions = client.act(frames, "push the red block to the top left corner")   # frames uint8[W, R, R, 3]
    # actions: float32[H, A], de-normalized (robot units); row 0 is the action for the current step

Encodings for ``act``: ``"npz"`` (default; lossless, smallest parse cost), ``"png"`` (lossless files), ``"jpeg"``
(lossy, smallest on the wire; ``jpeg_quality``), ``"json"`` (nested integer lists; slowest, for debugging). Frames
must already be R x R: the server does not resize (the camera -> model-input transform belongs to the client).

One keep-alive connection pool per client (``httpx.Client``). ``retries``: connection failures and 502/503/504 are
retried with exponential backoff (a policy call is a pure function of its inputs and seed, so a retry is safe);
4xx and 500 are not retried and raise :class:`PolicyServerError` carrying the server's message and field.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

ENCODINGS = ("npz", "png", "jpeg", "json")
_RETRY_STATUS = (502, 503, 504)


class PolicyServerError(RuntimeError):
    """The server answered 4xx/5xx. ``status``, ``message``, ``field`` (the offending field, if any), ``expected``."""

    def __init__(self, status: int, message: str, field: str | None = None, expected: str | None = None):
        self.status, self.message, self.field, self.expected = status, message, field, expected
        where = f" [field {field}]" if field else ""
        hint = f" (expected {expected})" if expected else ""
        super().__init__(f"policy server error {status}{where}: {message}{hint}")


def connect(url: str, **kwargs: Any) -> PolicyClient:
    """A `PolicyClient(url, **kwargs)` whose server has answered ``/health`` (after the client's retries); a URL
    where no server answers is one `UserError` line, as a bad command-line argument (policy.evaluate --server,
    scripts/serve_load_test.py --url)."""
    from core.errors import UserError

    client = PolicyClient(url, **kwargs)
    try:
        client.health()
    except httpx.TransportError as e:
        client.close()
        raise UserError(f"no policy server answers at {url} ({type(e).__name__}: {e}); expected one started with "
                        "python -m policy.serve --checkpoint RUN_DIR") from e
    return client


class PolicyClient:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        timeout: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        jpeg_quality: int = 95,
        http: httpx.Client | None = None,
    ):
        """``http``: an existing ``httpx.Client`` to send through (e.g. FastAPI's ``TestClient``); not closed here."""
        self.url = url.rstrip("/")
        self.retries, self.backoff_s, self.jpeg_quality = retries, backoff_s, jpeg_quality
        self._owns_http = http is None
        self._http = httpx.Client(base_url=self.url, timeout=timeout) if http is None else http
        self.last_response: dict | None = None  # the full JSON of the last /act (latency_ms, server_ms, ...)

    # -- plumbing ------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs) -> Any:
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout) and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise  # a read timeout is not retried: the server may still be working on it
            except httpx.TransportError:
                if attempt < self.retries:  # connection refused/reset, stale keep-alive connection
                    attempt += 1
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise
            if resp.status_code in _RETRY_STATUS and attempt < self.retries:
                attempt += 1
                retry_after = resp.headers.get("retry-after", "")
                delay = float(retry_after) if retry_after.isdigit() else self.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(delay, 5.0))
                continue
            return _decode(resp)

    # -- endpoints -----------------------------------------------------------------------------------------------------

    def health(self) -> dict:
        return self._request("GET", "/health")

    def metadata(self) -> dict:
        return self._request("GET", "/metadata")

    def reset(self) -> dict:
        return self._request("POST", "/reset")

    def act(self, images: np.ndarray, instruction: str, seed: int = 0, encoding: str = "npz", *,
            proprio: np.ndarray | None = None) -> np.ndarray:
        """``images`` uint8[W, R, R, 3], oldest frame first (and, for a policy whose metadata has ``proprio_dim`` >
        0, ``proprio``: the raw effector state f32[p]) -> float32[H, A] de-normalized actions."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8[W, R, R, 3], got {images.dtype}{list(images.shape)}")
        state = None if proprio is None else [float(v) for v in np.asarray(proprio, np.float64).reshape(-1)]
        if encoding == "json":
            kwargs: dict = {"json": {"images": images.tolist(), "instruction": instruction, "seed": int(seed),
                                     **({} if state is None else {"proprio": state})}}
        elif encoding in ("npz", "png", "jpeg"):
            data = {"instruction": instruction, "seed": str(int(seed)),
                    **({} if state is None else {"proprio": json.dumps(state)})}
            if encoding == "npz":
                buf = io.BytesIO()
                np.savez(buf, images=images)
                files = {"npz": ("images.npz", buf.getvalue(), "application/octet-stream")}
            else:
                files = {
                    f"image{i}": (
                        f"image{i}.{encoding}",
                        _encode_image(frame, encoding, self.jpeg_quality),
                        f"image/{encoding}",
                    )
                    for i, frame in enumerate(images)
                }
            kwargs = {"data": data, "files": files}
        else:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        out = self._request("POST", "/act", **kwargs)
        self.last_response = out
        return np.asarray(out["actions"], dtype=np.float32)


def _encode_image(frame: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(frame))
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _decode(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.is_success:
        if body is None:
            raise PolicyServerError(resp.status_code, f"non-JSON answer: {resp.text[:200]!r}")
        return body
    if isinstance(body, dict) and "error" in body:
        raise PolicyServerError(resp.status_code, str(body["error"]), body.get("field"), body.get("expected"))
    detail = body.get("detail") if isinstance(body, dict) else None
    raise PolicyServerError(resp.status_code, str(detail) if detail else resp.text[:500] or resp.reason_phrase)


# ----------------------------------------------------------------------------------------------------------------------
# Load test (shared by tests/test_serve.py and scripts/serve_load_test.py)


def run_load_test(
    url: str,
    *,
    clients: int = 8,
    requests_per_client: int = 50,
    encoding: str = "npz",
    instruction: str = "push the red block to the top left corner",
    timeout: float = 60.0,
    seed: int = 0,
) -> dict:
    """``clients`` threads, each with its own keep-alive ``PolicyClient``, send ``requests_per_client`` /act calls
    back to back with random frames of the server's expected shape. Returns percentiles (ms) of the client-side round
    trip, of the time in the server and of the time inside ``policy.act``, the throughput and the list of errors
    (never raises on a failed request).
    """
    with PolicyClient(url, timeout=timeout) as probe:
        meta = probe.metadata()
    W, R = len(meta["history_offsets"]), int(meta["image_size"])
    H, A = int(meta["chunk"]), int(meta["action_dim"])
    latencies: list[list[float]] = [[] for _ in range(clients)]
    policy_ms: list[list[float]] = [[] for _ in range(clients)]
    server_ms: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    errors_lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        rng = np.random.default_rng(seed + k)
        frames = rng.integers(0, 256, size=(4, W, R, R, 3), dtype=np.uint8)
        with PolicyClient(url, timeout=timeout) as client:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=timeout)
            for i in range(requests_per_client):
                t0 = time.perf_counter()
                try:
                    actions = client.act(frames[i % 4], instruction, seed=i, encoding=encoding)
                    if actions.shape != (H, A) or not np.isfinite(actions).all():
                        raise ValueError(f"bad actions {actions.dtype}{list(actions.shape)}")
                except Exception as e:
                    with errors_lock:
                        errors.append(f"client {k} request {i}: {type(e).__name__}: {e}")
                    continue
                latencies[k].append((time.perf_counter() - t0) * 1e3)
                policy_ms[k].append(float(client.last_response["latency_ms"]))
                server_ms[k].append(float(client.last_response["server_ms"]))

    threads = [threading.Thread(target=worker, args=(k,), name=f"load-{k}") for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for xs in latencies for x in xs])
    pol = np.array([x for xs in policy_ms for x in xs])
    srv = np.array([x for xs in server_ms for x in xs])

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if a.size else float("nan")

    return {
        "url": url,
        "encoding": encoding,
        "clients": clients,
        "requests": clients * requests_per_client,
        "ok": int(lat.size),
        "errors": errors,
        "wall_s": wall,
        "throughput_rps": lat.size / wall if wall > 0 else float("nan"),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": float(lat.max()) if lat.size else float("nan"),
        "policy_p50_ms": pct(pol, 50),
        "policy_p99_ms": pct(pol, 99),
        "server_p50_ms": pct(srv, 50),
        "server_p99_ms": pct(srv, 99),
        "metadata": {k: meta.get(k) for k in ("image_size", "history_offsets", "action_dim", "chunk", "recipe")},
    }


def format_load_report(r: dict) -> str:
    lines = [
        f"{r['clients']} clients x {r['requests'] // max(r['clients'], 1)} requests, encoding {r['encoding']}, "
        f"{r['url']}",
        f"ok {r['ok']}/{r['requests']}, errors {len(r['errors'])}, wall {r['wall_s']:.2f} s, "
        f"{r['throughput_rps']:.1f} req/s",
        f"round trip p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms; "
        f"in server (decode + queue + act) p50 {r['server_p50_ms']:.2f} ms, p99 {r['server_p99_ms']:.2f} ms; "
        f"policy.act p50 {r['policy_p50_ms']:.2f} ms, p99 {r['policy_p99_ms']:.2f} ms",
    ]
    lines += [f"  {e}" for e in r["errors"][:10]]
    return "\n".join(lines)
