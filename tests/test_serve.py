"""Policy server and client (policy/serve.py, policy/client.py) around a fake policy: endpoints, the three encodings,
a table of malformed requests (each 4xx, and the server keeps serving), policy failures (500, then serving again),
and a concurrent load test on a real localhost uvicorn server.

One file (~600 lines) on purpose: every test here shares the fake policy and the live-server fixture below."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.errors import UserError
from policy.client import PolicyClient, PolicyServerError, format_load_report, run_load_test
from policy.serve import build_parser, create_app, serve_in_thread
from policy.serve import main as serve_main

W, R, H, A = 2, 64, 4, 7
INSTRUCTION = "push the red block to the top left corner"
LIMIT = 1 << 20  # max_body_bytes in these tests (the default is 16 MiB)


def expected_actions(images: np.ndarray, instruction: str, seed: int) -> np.ndarray:
    base = np.arange(H * A, dtype=np.float32).reshape(H, A) / 10
    frame_means = images.reshape(W, -1).mean(axis=1) / 255
    return (
        base + frame_means[0] - 2 * frame_means[1] + (zlib.crc32(instruction.encode()) % 100) / 100 + seed * 1e-3
    ).astype(np.float32)


class FakePolicy:
    """Implements the PolicyLike protocol: deterministic small numpy output; records calls and their concurrency."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.resets = self.warmups = 0
        self.last: tuple | None = None
        self.active = self.max_active = 0
        self._lock = threading.Lock()
        self.gate: threading.Event | None = None

    def metadata(self) -> dict:
        return {
            "image_size": R,
            "history_offsets": [-2, 0],
            "action_dim": np.int64(A),  # numpy scalars must be made JSON-able by the server
            "chunk": H,
            "recipe": "fake",
        }

    def reset(self) -> None:
        self.resets += 1

    def warmup(self) -> None:
        self.warmups += 1

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert images.dtype == np.uint8 and images.shape == (W, R, R, 3)
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(0.0005)  # long enough for overlapping calls to show up in max_active
            if "explode" in instruction:
                raise RuntimeError("the fake policy exploded")
            self.last = (images.copy(), instruction, seed)
            out = expected_actions(images, instruction, seed)
            if self.mode == "nan":
                out[0, 0] = np.nan
            elif self.mode == "shape":
                out = out[:, :3]
            return out
        finally:
            with self._lock:
                self.active -= 1


def smooth_frames(seed: int = 0) -> np.ndarray:
    """Smooth images (JPEG-friendly) with distinct frame means."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:R, 0:R] / R
    frames = []
    for w in range(W):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        chans = [127 + 100 * np.sin(2 * np.pi * (x + (w + 1) * y) + p) for p in phase]
        frames.append(np.stack(chans, axis=-1))
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def encode(frame: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format=fmt, **kw)
    return buf.getvalue()


def npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


IMAGES = smooth_frames()


@pytest.fixture(scope="module")
def served():
    policy = FakePolicy()
    with TestClient(create_app(policy, max_body_bytes=LIMIT)) as http:  # context: runs the lifespan (warm-up)
        yield policy, http


def test_health_metadata_reset(served):
    policy, http = served
    client = PolicyClient("http://testserver", http=http)
    health = client.health()
    assert health["ok"] is True and health["warm"] is True and policy.warmups == 1
    meta = client.metadata()
    assert meta["image_size"] == R and meta["history_offsets"] == [-2, 0] and meta["action_dim"] == A
    assert meta["chunk"] == H and meta["recipe"] == "fake"
    assert meta["server"]["images"]["shape"] == [W, R, R, 3] and meta["server"]["max_body_bytes"] == LIMIT
    before = policy.resets
    assert client.reset() == {"ok": True} and policy.resets == before + 1
    schema = http.get("/openapi.json").json()
    assert {"/act", "/reset", "/health", "/metadata"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/act"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("encoding", ["npz", "png", "json", "jpeg"])
def test_act_roundtrip(served, encoding):
    policy, http = served
    client = PolicyClient("http://testserver", http=http)
    actions = client.act(IMAGES, INSTRUCTION, seed=7, encoding=encoding)
    assert actions.dtype == np.float32 and actions.shape == (H, A)
    got_images, got_instruction, got_seed = policy.last
    assert got_instruction == INSTRUCTION and got_seed == 7
    if encoding == "jpeg":  # lossy: close, not equal
        assert np.abs(got_images.astype(int) - IMAGES).mean() < 2.0
        np.testing.assert_allclose(actions, expected_actions(IMAGES, INSTRUCTION, 7), atol=0.02)
    else:
        np.testing.assert_array_equal(got_images, IMAGES)
        np.testing.assert_array_equal(actions, expected_actions(IMAGES, INSTRUCTION, 7))  # float32 exact through JSON
    resp = client.last_response
    assert resp["chunk"] == H and resp["action_dim"] == A and resp["latency_ms"] >= 0 and resp["server_ms"] >= 0


def test_act_b64_jpeg_and_png(served):
    policy, http = served
    b64 = [base64.b64encode(encode(f, "PNG")).decode() for f in IMAGES]
    r = http.post("/act", json={"image_b64_jpeg": b64, "instruction": INSTRUCTION})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(policy.last[0], IMAGES)
    assert policy.last[2] == 0  # default seed
    np.testing.assert_array_equal(np.float32(r.json()["actions"]), expected_actions(IMAGES, INSTRUCTION, 0))
    b64 = [base64.b64encode(encode(f, "JPEG", quality=95)).decode() for f in IMAGES]
    r = http.post("/act", json={"image_b64_jpeg": b64, "instruction": INSTRUCTION, "seed": 3})
    assert r.status_code == 200, r.text
    assert np.abs(policy.last[0].astype(int) - IMAGES).mean() < 2.0


# ----------------------------------------------------------------------------------------------------------------------
# Fuzz: malformed requests, each answered 4xx with a JSON error naming the field; the server keeps serving.


def _json(payload, **extra):
    return {"content": json.dumps(payload, allow_nan=True), "headers": {"content-type": "application/json"}, **extra}


def _valid_json(**override):
    payload = {"images": IMAGES.tolist(), "instruction": INSTRUCTION, "seed": 1}
    payload.update(override)
    return {k: v for k, v in payload.items() if v is not _DROP}


_DROP = object()


def _form(files: dict, data: dict | None = None):
    data = {"instruction": INSTRUCTION} if data is None else data
    return {"files": {k: (f"{k}.bin", v, "application/octet-stream") for k, v in files.items()}, "data": data}


def _images_files(frames=IMAGES, fmt="JPEG"):
    return {f"image{i}": encode(f, fmt) for i, f in enumerate(frames)}


def _chunked(total: int):
    def gen():
        sent = 0
        while sent < total:
            yield b"[" * 65536
            sent += 65536

    return gen()


def _bad_images(kind: str):
    imgs = IMAGES.tolist()
    if kind == "float":
        imgs[0][0][0][0] = 1.5
    elif kind == "nan":
        imgs[1][5][5][2] = float("nan")
    elif kind == "string":
        imgs[0][0][0][1] = "12"
    elif kind == "null":
        imgs[0][0][0] = None
    elif kind == "ragged":
        imgs[0][3] = imgs[0][3][:-1]
    elif kind == "range":
        imgs[0][0][0][0] = 256
    elif kind == "negative":
        imgs[1][0][0][0] = -1
    elif kind == "bool":
        return np.zeros((W, R, R, 3), bool).tolist()
    return imgs


_cmyk = io.BytesIO()
Image.new("CMYK", (R, R)).save(_cmyk, format="JPEG")


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _zip_bomb() -> bytes:
    """A valid images.npy header followed by 20 MB of zeros, deflated to a few kB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", _npy(IMAGES) + bytes(20 << 20))
    return buf.getvalue()


def _pickled_npz_bytes():
    buf = io.BytesIO()
    np.savez(buf, images=np.array([{"a": 1}, None], dtype=object))
    return buf.getvalue()


FUZZ = [
    # id, request builder, expected status, expected field (None: don't check)
    ("json-missing-instruction", lambda: _json(_valid_json(instruction=_DROP)), 422, "instruction"),
    ("json-missing-images", lambda: _json(_valid_json(images=_DROP)), 422, "images"),
    (
        "json-both-image-fields",
        lambda: _json(_valid_json(image_b64_jpeg=[base64.b64encode(encode(f)).decode() for f in IMAGES])),
        422,
        "images",
    ),
    ("json-3-frames", lambda: _json(_valid_json(images=np.zeros((3, R, R, 3), int).tolist())), 422, "images"),
    ("json-1-frame", lambda: _json(_valid_json(images=IMAGES[:1].tolist())), 422, "images"),
    ("json-wrong-size", lambda: _json(_valid_json(images=np.zeros((W, 32, 32, 3), int).tolist())), 422, "images"),
    ("json-4-channels", lambda: _json(_valid_json(images=np.zeros((W, R, R, 4), int).tolist())), 422, "images"),
    ("json-flat-list", lambda: _json(_valid_json(images=[0] * (W * R * R * 3))), 422, "images"),
    ("json-images-dict", lambda: _json(_valid_json(images={"a": 1})), 422, "images"),
    ("json-floats", lambda: _json(_valid_json(images=_bad_images("float"))), 422, "images"),
    ("json-nan", lambda: _json(_valid_json(images=_bad_images("nan"))), 422, "images"),
    ("json-string-in-array", lambda: _json(_valid_json(images=_bad_images("string"))), 422, "images"),
    ("json-null-in-array", lambda: _json(_valid_json(images=_bad_images("null"))), 422, "images"),
    ("json-ragged", lambda: _json(_valid_json(images=_bad_images("ragged"))), 422, "images"),
    ("json-value-256", lambda: _json(_valid_json(images=_bad_images("range"))), 422, "images"),
    ("json-value-negative", lambda: _json(_valid_json(images=_bad_images("negative"))), 422, "images"),
    ("json-booleans", lambda: _json(_valid_json(images=_bad_images("bool"))), 422, "images"),
    ("json-instruction-int", lambda: _json(_valid_json(instruction=5)), 422, "instruction"),
    ("json-instruction-blank", lambda: _json(_valid_json(instruction="   ")), 422, "instruction"),
    ("json-instruction-too-long", lambda: _json(_valid_json(instruction="x" * 1001)), 422, "instruction"),
    ("json-seed-string", lambda: _json(_valid_json(seed="abc")), 422, "seed"),
    ("json-seed-float", lambda: _json(_valid_json(seed=1.5)), 422, "seed"),
    ("json-seed-bool", lambda: _json(_valid_json(seed=True)), 422, "seed"),
    ("json-seed-negative", lambda: _json(_valid_json(seed=-1)), 422, "seed"),
    ("json-seed-huge", lambda: _json(_valid_json(seed=2**64)), 422, "seed"),
    ("json-unknown-field", lambda: _json({**_valid_json(), "task_description": "x"}), 422, "task_description"),
    ("json-body-is-list", lambda: _json([1, 2, 3]), 422, "body"),
    (
        "json-not-json",
        lambda: {"content": b"{images: nope", "headers": {"content-type": "application/json"}},
        400,
        "body",
    ),
    (
        "json-not-utf8",
        lambda: {"content": b"\xff\xfe\xfa{", "headers": {"content-type": "application/json"}},
        400,
        "body",
    ),
    (
        "json-deep-nesting",
        lambda: {"content": b"[" * 200_000, "headers": {"content-type": "application/json"}},
        400,
        "body",
    ),
    ("json-empty-body", lambda: {"content": b"", "headers": {"content-type": "application/json"}}, 400, "body"),
    (
        "b64-invalid",
        lambda: _json(_valid_json(images=_DROP, image_b64_jpeg=["%%%not base64%%%", "AAAA"])),
        422,
        "image_b64_jpeg[0]",
    ),
    (
        "b64-not-an-image",
        lambda: _json(_valid_json(images=_DROP, image_b64_jpeg=[base64.b64encode(b"hello").decode()] * W)),
        422,
        "image_b64_jpeg[0]",
    ),
    (
        "b64-wrong-count",
        lambda: _json(_valid_json(images=_DROP, image_b64_jpeg=[base64.b64encode(encode(IMAGES[0])).decode()])),
        422,
        "image_b64_jpeg",
    ),
    ("b64-not-strings", lambda: _json(_valid_json(images=_DROP, image_b64_jpeg=[1, 2])), 422, "image_b64_jpeg"),
    (
        "content-type-text",
        lambda: {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "Content-Type",
    ),
    ("content-type-missing", lambda: {"content": b"hello"}, 415, "Content-Type"),
    ("form-urlencoded", lambda: {"data": {"instruction": INSTRUCTION}}, 415, "Content-Type"),
    ("mp-corrupt-jpeg", lambda: _form({**_images_files(), "image1": encode(IMAGES[1])[:300]}), 422, "image1"),
    ("mp-garbage-image", lambda: _form({**_images_files(), "image0": b"\x00garbage" * 100}), 422, "image0"),
    ("mp-wrong-image-size", lambda: _form(_images_files(np.zeros((W, 32, 32, 3), np.uint8))), 422, "image0"),
    (
        "mp-huge-dimensions-header",
        lambda: _form(
            {**_images_files(), "image0": encode(np.zeros((2000, 2000, 3), np.uint8), "PNG", compress_level=9)}
        ),
        422,
        "image0",
    ),
    ("mp-grayscale-png", lambda: _form({**_images_files(), "image1": encode(IMAGES[1, ..., 0], "PNG")}), 422, "image1"),
    ("mp-cmyk-jpeg", lambda: _form({**_images_files(), "image0": _cmyk.getvalue()}), 422, "image0"),
    ("mp-missing-image1", lambda: _form({"image0": encode(IMAGES[0])}), 422, "image1"),
    ("mp-too-many-images", lambda: _form({**_images_files(), "image2": encode(IMAGES[0])}), 422, "image2"),
    ("mp-far-too-many-files", lambda: _form({f"f{i}": b"x" for i in range(40)}), 422, "body"),
    ("mp-missing-instruction", lambda: _form(_images_files(), data={}), 422, "instruction"),
    ("mp-instruction-as-file", lambda: _form({**_images_files(), "instruction": b"push"}, data={}), 422, "instruction"),
    (
        "mp-image-as-text-field",
        lambda: _form({"image0": encode(IMAGES[0])}, data={"instruction": "x", "image1": "abc"}),
        422,
        "image1",
    ),
    ("mp-seed-not-int", lambda: _form(_images_files(), data={"instruction": INSTRUCTION, "seed": "1.5"}), 422, "seed"),
    ("mp-instruction-too-long", lambda: _form(_images_files(), data={"instruction": "y" * 5000}), 422, "instruction"),
    ("npz-float32", lambda: _form({"npz": npz_bytes(images=IMAGES.astype(np.float32))}), 422, "npz:images"),
    ("npz-int64", lambda: _form({"npz": npz_bytes(images=IMAGES.astype(np.int64))}), 422, "npz:images"),
    ("npz-wrong-shape", lambda: _form({"npz": npz_bytes(images=IMAGES[:, :32])}), 422, "npz:images"),
    ("npz-no-images-key", lambda: _form({"npz": npz_bytes(frames=IMAGES)}), 422, "npz"),
    ("npz-corrupt", lambda: _form({"npz": npz_bytes(images=IMAGES)[:500]}), 422, "npz"),
    ("npz-pickled-objects", lambda: _form({"npz": _pickled_npz_bytes()}), 422, "npz:images"),
    (
        "npz-zip-bomb-shape",
        lambda: _form({"npz": npz_bytes(True, images=np.zeros((20 << 20,), np.uint8))}),
        422,
        "npz:images",
    ),
    ("npz-zip-bomb-trailing", lambda: _form({"npz": _zip_bomb()}), 422, "npz"),
    ("npy-wrong-shape", lambda: _form({"npz": _npy(IMAGES[:1])}), 422, "npz:images"),
    ("npz-plus-image", lambda: _form({"npz": npz_bytes(images=IMAGES), "image0": encode(IMAGES[0])}), 422, "npz"),
    (
        "mp-no-boundary",
        lambda: {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "Content-Type",
    ),
    (
        "mp-garbage-body",
        lambda: {"content": b"\x00" * 1000, "headers": {"content-type": "multipart/form-data; boundary=zz"}},
        400,
        "body",
    ),
    (
        "huge-content-length",
        lambda: {"content": b"[" * (LIMIT + 1), "headers": {"content-type": "application/json"}},
        413,
        "body",
    ),
    ("huge-npz", lambda: _form({"npz": np.random.default_rng(0).bytes(LIMIT + 100)}), 413, "body"),
    (
        "huge-streamed-chunked",
        lambda: {"content": _chunked(3 * LIMIT), "headers": {"content-type": "application/json"}},
        413,
        "body",
    ),
]


@pytest.mark.parametrize("case", FUZZ, ids=[c[0] for c in FUZZ])
def test_fuzz_malformed_requests(served, case):
    _, http = served
    _, build, status, field = case
    r = http.post("/act", **build())
    assert r.status_code == status, r.text[:500]
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    if field is not None:
        assert body["field"] == field, body
    # still serving
    assert http.get("/health").json()["ok"] is True
    ok = http.post("/act", **_form({"npz": npz_bytes(images=IMAGES)}, data={"instruction": INSTRUCTION, "seed": "2"}))
    assert ok.status_code == 200, ok.text
    np.testing.assert_array_equal(np.float32(ok.json()["actions"]), expected_actions(IMAGES, INSTRUCTION, 2))


def test_fuzz_table_is_large_enough():
    assert len(FUZZ) >= 20 and len({c[0] for c in FUZZ}) == len(FUZZ)


def test_unknown_routes_and_methods_answer_json(served):
    _, http = served
    for r, status in ((http.get("/nope"), 404), (http.get("/act"), 405), (http.post("/health"), 405)):
        assert r.status_code == status and r.json()["status"] == status


def test_error_messages_name_expectations(served):
    _, http = served
    r = http.post("/act", json={"images": np.zeros((W, 32, 32, 3), int).tolist(), "instruction": "x"})
    assert "[2, 64, 64, 3]" in r.json()["expected"]
    r = http.post("/act", **_form(_images_files(np.zeros((W, 32, 32, 3), np.uint8))))
    assert "64 x 64" in r.json()["expected"] and "resize" in r.json()["expected"]


def test_client_raises_server_errors(served):
    _, http = served
    client = PolicyClient("http://testserver", http=http, retries=0)
    with pytest.raises(PolicyServerError) as info:
        client.act(np.zeros((W, 32, 32, 3), np.uint8), INSTRUCTION)
    assert info.value.status == 422 and info.value.field == "npz:images" and "32" in str(info.value)
    with pytest.raises(PolicyServerError) as info:
        client.act(IMAGES, "", encoding="jpeg")
    assert info.value.status == 422 and info.value.field == "instruction"
    with pytest.raises(ValueError):
        client.act(IMAGES.astype(np.float32), INSTRUCTION)  # checked locally, never sent
    with pytest.raises(ValueError):
        client.act(IMAGES, INSTRUCTION, encoding="bmp")


# ----------------------------------------------------------------------------------------------------------------------
# Policy failures


@pytest.mark.parametrize("mode", ["raise", "nan", "shape"])
def test_policy_failure_is_500_and_server_recovers(mode):
    policy = FakePolicy("ok" if mode == "raise" else mode)
    with TestClient(create_app(policy)) as http:
        client = PolicyClient("http://testserver", http=http, retries=0)
        instruction = "explode" if mode == "raise" else INSTRUCTION
        with pytest.raises(PolicyServerError) as info:
            client.act(IMAGES, instruction)
        assert info.value.status == 500
        assert {"raise": "exploded", "nan": "non-finite", "shape": "shape"}[mode] in info.value.message
        policy.mode = "ok"
        np.testing.assert_array_equal(client.act(IMAGES, INSTRUCTION), expected_actions(IMAGES, INSTRUCTION, 0))
        assert client.health()["errors"] == 1


def test_reset_failure_is_500():
    policy = FakePolicy()
    policy.reset = lambda: (_ for _ in ()).throw(ValueError("no episode"))
    with TestClient(create_app(policy)) as http:
        r = http.post("/reset")
        assert r.status_code == 500 and "no episode" in r.json()["error"]
        assert http.get("/health").status_code == 200


def test_queue_full_is_503():
    with TestClient(create_app(FakePolicy(), max_queue=0)) as http:
        client = PolicyClient("http://testserver", http=http, retries=0)
        with pytest.raises(PolicyServerError) as info:
            client.act(IMAGES, INSTRUCTION)
        assert info.value.status == 503
        assert http.post("/act", **_form(_images_files())).headers["retry-after"] == "1"


def test_bad_metadata_fails_at_creation():
    policy = FakePolicy()
    policy.metadata = lambda: {"image_size": R, "chunk": H}
    with pytest.raises(ValueError, match="history_offsets"):
        create_app(policy)


def test_no_warmup_until_first_act():
    policy = FakePolicy()
    with TestClient(create_app(policy, warmup=False)) as http:
        assert http.get("/health").json()["warm"] is False and policy.warmups == 0
        assert http.post("/act", json={"images": IMAGES.tolist(), "instruction": "x"}).status_code == 200
        assert http.get("/health").json()["warm"] is True


def test_cli_defaults_and_server_imports_no_jax():
    args = build_parser().parse_args(["--checkpoint", "runs/x"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.step is None
    assert args.max_concurrent == 64 and args.max_buffered_mb == 64 and args.body_timeout == 30
    assert args.gripper is None and args.gripper_range is None
    args = build_parser().parse_args(["--checkpoint", "x", "--gripper", "binarize", "--gripper-range", "0", "1"])
    assert args.gripper == "binarize" and args.gripper_range == [0.0, 1.0]
    for flags, match in ((["--max-body-mb", "100"], "--max-buffered-mb 64 must be >= --max-body-mb 100"),
                         (["--keep-alive", "0"], "--keep-alive must be > 0, got 0")):
        with pytest.raises(UserError, match=match):  # before the checkpoint is read; was a ValueError traceback
            serve_main(["--checkpoint", "/nonexistent/run", *flags])
    with pytest.raises(SystemExit) as exit_:  # argparse's usage line, not logging's "Unknown level" traceback
        build_parser().parse_args(["--checkpoint", "x", "--log-level", "verbose"])
    assert exit_.value.code == 2
    assert build_parser().parse_args(["--checkpoint", "x", "--log-level", "DEBUG"]).log_level == "debug"
    code = ("import sys, policy.serve, policy.client, policy.payload, policy.limits, policy.metadata; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------------------------------------------------
# Real uvicorn on 127.0.0.1


def test_health_answers_while_policy_is_busy():
    policy = FakePolicy()
    policy.gate = threading.Event()
    with serve_in_thread(create_app(policy)) as url, PolicyClient(url, timeout=20) as client:
        result: dict = {}
        t = threading.Thread(target=lambda: result.setdefault("a", client.act(IMAGES, INSTRUCTION)))
        t.start()
        deadline = time.monotonic() + 10
        with PolicyClient(url, timeout=5) as other:
            while other.health()["pending"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            health = other.health()
        assert health["pending"] == 1  # /act is parked inside the policy, /health still answers
        policy.gate.set()
        t.join(20)
        np.testing.assert_array_equal(result["a"], expected_actions(IMAGES, INSTRUCTION, 0))


def test_concurrent_load_localhost(capsys):
    policy = FakePolicy()
    with serve_in_thread(create_app(policy)) as url:
        assert url.startswith("http://127.0.0.1:")
        report = run_load_test(url, clients=8, requests_per_client=50, encoding="npz")
        with PolicyClient(url) as client:
            assert client.health()["requests"] == 400
    with capsys.disabled():
        print("\n" + format_load_report(report))
    assert report["errors"] == [] and report["ok"] == 400
    assert policy.max_active == 1  # policy calls are serialized
    assert report["p50_ms"] > 0 and report["p99_ms"] >= report["p50_ms"]


# ----------------------------------------------------------------------------------------------------------------------
# The metadata record and the JSON helper


def test_metadata_record_reads_old_names_and_writes_one():
    from policy.metadata import PolicyMetadata

    old = {"image_resolution": R, "image_size": R, "chunk_length": H, "history_offsets": [-2, 0], "action_dim": 7,
           "num_frames": 2, "recipe": "vipra", "name": "old-policy", "latent_actions": [2, 4]}
    rec = PolicyMetadata.from_dict(old)
    assert (rec.image_size, rec.chunk, rec.num_frames, rec.history_offsets) == (R, H, W, (-2, 0))
    assert rec.latent_actions == (2, 4) and rec.extra == {"name": "old-policy"}
    d = rec.to_dict()
    assert "image_resolution" not in d and "chunk_length" not in d and d["chunk"] == H and d["image_size"] == R
    assert d["name"] == "old-policy" and d["num_frames"] == 2 and PolicyMetadata.from_dict(d) == rec
    with pytest.raises(ValueError, match="chunk_length=5 disagrees with chunk=4"):
        PolicyMetadata.from_dict({**old, "chunk": 4, "chunk_length": 5})
    with pytest.raises(ValueError, match="image_size must be an integer >= 1"):
        PolicyMetadata.from_dict({**old, "image_size": 0, "image_resolution": 0})
    with pytest.raises(ValueError, match="history_offsets"):
        PolicyMetadata.from_dict({**old, "history_offsets": [1]})
    with pytest.raises(ValueError, match="gripper mode"):
        PolicyMetadata.from_dict({**old, "gripper": {"mode": "clamp"}})


def test_server_serves_old_style_metadata_under_one_name():
    policy = FakePolicy()
    policy.metadata = lambda: {"image_resolution": R, "chunk_length": H, "history_offsets": [-2, 0], "action_dim": A}
    with TestClient(create_app(policy, warmup=False)) as http:
        meta = http.get("/metadata").json()
        assert meta["image_size"] == R and meta["chunk"] == H and "chunk_length" not in meta
        assert http.post("/act", json={"images": IMAGES.tolist(), "instruction": "x"}).status_code == 200


def test_one_json_helper():
    import enum
    import pathlib

    from core.jsonable import jsonable

    class Kind(enum.Enum):
        FLOW = "flow"

    x = {1: (np.float32(0.5), np.int64(3)), "a": np.arange(3), "nan": float("nan"), "inf": np.float64("-inf"),
         "p": pathlib.Path("/tmp/x"), "k": Kind.FLOW, "o": object.__new__(FakePolicy), "n": None, "b": np.bool_(True)}
    out = jsonable(x)
    assert out["1"] == [0.5, 3] and out["a"] == [0, 1, 2] and out["nan"] == "nan" and out["inf"] == "-inf"
    assert out["p"] == "/tmp/x" and out["k"] == "flow" and out["n"] is None and out["b"] is True
    assert isinstance(out["o"], str)
    json.dumps(out, allow_nan=False)  # strict JSON
    from policy import evaluate, serve

    assert not hasattr(evaluate, "_jsonable") and not hasattr(serve, "_jsonable")  # one helper, not two


def test_report_files_are_written_into_folders_that_do_not_exist_yet(tmp_path):
    """openloop --out, compile_check --json, ...: a report written after minutes of work into a folder not yet made
    failed with FileNotFoundError and the figures were lost."""
    from core.jsonable import write_json

    path = tmp_path / "new" / "folder" / "report.json"
    write_json(str(path), {"a": [1, 2]})
    write_json(str(path), {"a": [3]})  # replaced whole
    assert json.loads(path.read_text()) == {"a": [3]} and [p.name for p in path.parent.iterdir()] == ["report.json"]
