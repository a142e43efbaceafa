"""Fault injection for the policy server (issue #22, "a server with limits"): each test reproduces a hostile or
broken client and asserts the new outcome. Real uvicorn on 127.0.0.1 with short limits; raw sockets where the fault
is at the HTTP level (a body that never ends, a head that never ends). Every loop is bounded by a deadline.

| fault | before | now |
|---|---|---|
| instruction with a lone surrogate (JSON "\\ud800") | 500 | 422 naming instruction |
| a JSON key with a lone surrogate | 500 (the error answer failed to encode) | 422 |
| body over the cap (declared Content-Length) | 413, body read anyway | 413 before reading, Connection: close |
| more requests in flight than max_concurrent | queued without bound | 503 + Retry-After |
| more body bytes held at once than max_buffered_bytes | +1 GB RSS for 48 x 15 MB | 503 + Retry-After, peak <= cap |
| a client that never finishes its body | held forever | 408, connection closed after body_timeout_s |
| a client that never finishes its request head | held forever | closed after header_timeout_s |
| a client that disconnects mid-body | a traceback per request in the log (500) | counted as an error, no traceback |
| /health while the policy and every slot are busy | answered | still answered, fast |
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serve import IMAGES, INSTRUCTION, FakePolicy, expected_actions

from policy.client import PolicyClient
from policy.limits import ServerLimits
from policy.serve import create_app, serve_in_thread

KIB = 1024


def _limits(**kw) -> ServerLimits:
    base = {"max_body_bytes": 256 * KIB, "max_buffered_bytes": 512 * KIB, "max_concurrent": 4,
            "body_timeout_s": 0.5, "header_timeout_s": 0.5, "keep_alive_s": 5}
    return ServerLimits(**{**base, **kw})


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@contextlib.contextmanager
def _raw(url: str, timeout: float = 5.0):
    s = socket.create_connection(_host_port(url), timeout=timeout)
    try:
        yield s
    finally:
        s.close()


def _head(path: str, length: int | None, content_type: str = "application/json") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(s: socket.socket, deadline_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Reads one HTTP response (status, lower-cased headers, body by Content-Length)."""
    buf = b""
    end = time.monotonic() + deadline_s
    while b"\r\n\r\n" not in buf:
        assert time.monotonic() < end, f"no response head within {deadline_s} s: {buf[:200]!r}"
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {buf[:200]!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        assert time.monotonic() < end, "response body incomplete"
        chunk = s.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return status, headers, body[:n]


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the peer closes the connection (recv returns b"" or resets) within ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.settimeout(max(end - time.monotonic(), 0.01))
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def _valid_json(instruction: str = INSTRUCTION, **extra) -> bytes:
    return json.dumps({"images": IMAGES.tolist(), "instruction": instruction, **extra}).encode()


# ----------------------------------------------------------------------------------------------------------------------
# Undecodable text: 4xx, never 500


@pytest.fixture(scope="module")
def http():
    with TestClient(create_app(FakePolicy(), limits=_limits())) as client:
        yield client


@pytest.mark.parametrize(
    "body, content_type, field",
    [
        (_valid_json("push \ud800 the block"), "application/json", "instruction"),  # json.dumps writes \ud800
        (_valid_json("\udfff"), "application/json", "instruction"),
        (_valid_json("push\x00the block"), "application/json", "instruction"),
        (json.dumps({"images": IMAGES.tolist(), "instruction": INSTRUCTION, "\ud83d": 1}).encode(), "application/json",
         "\\ud83d"),
    ],
    ids=["json-lone-high-surrogate", "json-lone-low-surrogate", "json-nul", "json-surrogate-key"],
)
def test_undecodable_json_text_is_4xx(http, body, content_type, field):
    r = http.post("/act", content=body, headers={"content-type": content_type})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["field"] == field and r.json()["error"]
    ok = http.post("/act", content=_valid_json(), headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text[:300]


@pytest.mark.parametrize("raw", [b"push \xed\xa0\x80 block", b"\xff\xfe", b"push\x00"], ids=["cesu", "bad-utf8", "nul"])
def test_undecodable_multipart_text_is_4xx(http, raw):
    files = {"npz": ("images.npz", _npz(), "application/octet-stream")}
    r = http.post("/act", files=files, data={"instruction": raw})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["field"] == "instruction"


def _npz() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, images=IMAGES)
    return buf.getvalue()


def test_oversized_json_is_413_before_parsing():
    lim = _limits(max_body_bytes=1024 * KIB, max_buffered_bytes=2048 * KIB)
    with TestClient(create_app(FakePolicy(), limits=lim)) as http:
        # under max_body_bytes but larger than any valid JSON request for a 2 x 64 x 64 policy
        size = http.get("/metadata").json()["server"]["max_json_bytes"] + 1
        assert size < lim.max_body_bytes
        r = http.post("/act", content=b" " * size, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] == "body" and "npz" in r.json()["expected"]


# ----------------------------------------------------------------------------------------------------------------------
# Real server: caps, timeouts, /health


def test_body_over_cap_is_413_without_reading_it():
    lim = _limits()
    with serve_in_thread(create_app(FakePolicy(), limits=lim)) as url, _raw(url) as s:
        s.sendall(_head("/act", lim.max_body_bytes + 1))  # no body: the answer must not wait for it
        status, headers, body = _read_response(s)
        assert status == 413 and json.loads(body)["field"] == "body"
        assert headers.get("connection") == "close" and _closed_within(s, 2.0)


def test_concurrency_over_cap_is_503_with_retry_after():
    policy = FakePolicy()
    policy.gate = threading.Event()
    lim = _limits(max_concurrent=2)
    with serve_in_thread(create_app(policy, limits=lim)) as url:
        results: list = []
        workers = [threading.Thread(target=lambda: results.append(PolicyClient(url, timeout=20).act(IMAGES, "a")))
                   for _ in range(2)]
        for t in workers:
            t.start()
        with PolicyClient(url, timeout=5, retries=0) as probe:
            end = time.monotonic() + 10
            # in_flight counts a request from admission; pending only once its body is parsed and it waits for the
            # policy. Wait for both: under load the second body can still be parsing when in_flight reads 2.
            while (h := probe.health())["in_flight"] < 2 or h["pending"] < 2:
                assert time.monotonic() < end, f"the two requests never got in flight and queued: {h}"
                time.sleep(0.01)
            r = probe._http.post("/act", files={"npz": ("i.npz", _npz())}, data={"instruction": INSTRUCTION})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert "max_concurrent=2" in r.json()["error"]
            t0 = time.perf_counter()
            health = probe.health()  # GET is never limited, and never waits for the policy
            assert time.perf_counter() - t0 < 1.0 and health["rejected"]["503"] == 1 and health["pending"] == 2
        policy.gate.set()
        for t in workers:
            t.join(20)
        assert len(results) == 2
        np.testing.assert_array_equal(results[0], expected_actions(IMAGES, "a", 0))


def test_buffered_bytes_over_cap_is_503_and_peak_stays_under_cap():
    lim = _limits(max_body_bytes=200 * KIB, max_buffered_bytes=450 * KIB, max_concurrent=64)
    with serve_in_thread(create_app(FakePolicy(), limits=lim)) as url, contextlib.ExitStack() as stack:
        held = []
        for _ in range(2):  # two bodies of 200 KiB declared, half sent, held open: 400 KiB reserved
            s = stack.enter_context(_raw(url))
            s.sendall(_head("/act", 200 * KIB) + b" " * (100 * KIB))
            held.append(s)
        with PolicyClient(url, timeout=5, retries=0) as probe:
            end = time.monotonic() + 5
            while probe.health()["buffered_bytes"] < 400 * KIB:
                assert time.monotonic() < end
                time.sleep(0.01)
            s = stack.enter_context(_raw(url))
            s.sendall(_head("/act", 100 * KIB))  # 400 + 100 > 450 KiB
            status, headers, body = _read_response(s)
            assert status == 503 and headers["retry-after"] == "1" and "max_buffered_bytes" in json.loads(body)["error"]
            # small requests still fit beside the held bodies
            np.testing.assert_array_equal(probe.act(IMAGES, INSTRUCTION), expected_actions(IMAGES, INSTRUCTION, 0))
            for s in held:
                s.close()
            # a burst of 16 max-size bodies: whatever is admitted, never more than the cap is held at once
            threads = [threading.Thread(target=_post_garbage, args=(url, lim.max_body_bytes)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            health = probe.health()
        assert health["peak_buffered_bytes"] <= lim.max_buffered_bytes and health["rejected"]["503"] >= 1
        assert health["buffered_bytes"] == 0 and health["in_flight"] == 0  # everything released


def _post_garbage(url: str, size: int) -> None:
    with contextlib.suppress(OSError), _raw(url) as s:
        s.sendall(_head("/act", size, "multipart/form-data; boundary=zz") + b"\x00" * size)
        with contextlib.suppress(AssertionError):
            _read_response(s)


def test_slow_body_is_dropped_after_the_timeout():
    lim = _limits(body_timeout_s=0.5)
    with serve_in_thread(create_app(FakePolicy(), limits=lim)) as url, _raw(url) as s:
        t0 = time.monotonic()
        s.sendall(_head("/act", 10 * KIB) + b"{")  # 1 byte of 10 KiB, then silence
        status, headers, body = _read_response(s, deadline_s=5)
        waited = time.monotonic() - t0
        assert status == 408 and json.loads(body)["field"] == "body" and 0.4 < waited < 4
        assert headers.get("connection") == "close" and _closed_within(s, 2.0)
        with PolicyClient(url, timeout=5) as client:
            health = client.health()
            assert health["rejected"]["408"] == 1 and health["in_flight"] == 0
            np.testing.assert_array_equal(client.act(IMAGES, INSTRUCTION), expected_actions(IMAGES, INSTRUCTION, 0))


def test_slow_chunked_body_is_dropped_too():
    with serve_in_thread(create_app(FakePolicy(), limits=_limits())) as url, _raw(url) as s:
        s.sendall(_head("/act", None) + b"5\r\n{\"ins\r\n")  # one chunk, then silence
        status, headers, _ = _read_response(s, deadline_s=5)
        assert status == 408 and headers.get("connection") == "close" and _closed_within(s, 2.0)


def test_client_gone_mid_body_is_quiet(caplog):
    errors_log = logging.getLogger("uvicorn.error")
    errors_log.addHandler(caplog.handler)
    try:
        with serve_in_thread(create_app(FakePolicy(), limits=_limits())) as url:
            with _raw(url) as s:
                s.sendall(_head("/act", 10 * KIB) + b"{")
                time.sleep(0.1)
            with PolicyClient(url, timeout=5) as client:
                end = time.monotonic() + 5
                while client.health()["in_flight"] or not client.health()["errors"]:
                    assert time.monotonic() < end, client.health()
                    time.sleep(0.01)
                assert client.health()["errors"] == 1 and client.health()["buffered_bytes"] == 0
    finally:
        errors_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:500]


def test_slow_request_head_is_dropped_after_the_timeout():
    with serve_in_thread(create_app(FakePolicy(), limits=_limits(header_timeout_s=0.5))) as url, _raw(url) as s:
        s.sendall(b"POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends its head
        t0 = time.monotonic()
        assert _closed_within(s, 4.0) and time.monotonic() - t0 < 4.0
        with _raw(url) as idle:  # a connection that sends nothing at all
            assert _closed_within(idle, 4.0)


def test_health_answers_while_worker_busy_and_slots_full():
    policy = FakePolicy()
    policy.gate = threading.Event()
    lim = _limits(max_concurrent=2, body_timeout_s=30)
    with serve_in_thread(create_app(policy, limits=lim)) as url, _raw(url) as slow:
        worker = threading.Thread(target=lambda: PolicyClient(url, timeout=20).act(IMAGES, INSTRUCTION))
        worker.start()
        with PolicyClient(url, timeout=5) as probe:
            end = time.monotonic() + 10
            while probe.health()["pending"] < 1:  # the worker thread is inside policy.act
                assert time.monotonic() < end
                time.sleep(0.01)
            slow.sendall(_head("/act", 10 * KIB) + b"{")  # a slow client takes the other slot
            while probe.health()["in_flight"] < 2:
                assert time.monotonic() < end
                time.sleep(0.01)
            assert probe._http.post("/reset").status_code == 503  # every slot is full
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                assert probe.health()["ok"] is True and probe.metadata()["chunk"] == 4
                times.append(time.perf_counter() - t0)
            assert max(times) < 1.0, times
        policy.gate.set()
        worker.join(20)
        assert not worker.is_alive()


def test_limits_are_validated_and_shown():
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        ServerLimits(max_body_bytes=10, max_buffered_bytes=5)
    with pytest.raises(ValueError, match="body_timeout_s"):
        ServerLimits(body_timeout_s=0)
    with TestClient(create_app(FakePolicy(), limits=_limits())) as client:
        server = client.get("/metadata").json()["server"]
    assert server["max_concurrent"] == 4 and server["max_buffered_bytes"] == 512 * KIB
    assert server["body_timeout_s"] == 0.5 and server["header_timeout_s"] == 0.5
