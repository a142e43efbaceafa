"""Load test of the policy server: concurrent /act clients, optionally beside a flood of large bodies.

Against a running server (``python -m policy.serve ...``):

    python scripts/serve_load_test.py --url http://127.0.0.1:8000 [--clients 8] [--requests 50] [--encoding npz]

Side by side on loopback, with servers this script starts around a tiny numpy policy (no checkpoint, no JAX):

    python scripts/serve_load_test.py --compare [--clients-list 16 48] [--rounds 2] [--flood-clients 48]
        [--flood-mb 15] [--flood-kind multipart] [--json-out report.json]

``--compare`` starts two servers in subprocesses, one with the default limits (``policy/limits.py``) and one with the
concurrency and buffered-bytes caps lifted ("no caps", as the server was before them), and runs, in interleaved
rounds, every (server, clients, flood off/on) combination. A run: ``clients`` threads, each with its own keep-alive
connection, send ``requests`` back-to-back ``/act`` calls; a probe times ``GET /health`` every 50 ms; the server's
resident memory is sampled every 20 ms (peak over the run, from ``/proc/<pid>/status``). "Flood on": a separate
process keeps ``--flood-clients`` connections each sending ``--flood-mb`` MB bodies back to back (garbage multipart
or JSON) for the whole run. Prints one table (p50/p99 of the /act round trip, /health p99 and max, peak RSS, the
flood's answers by status) and exits 1 if any /act failed.

The same client code (``policy.client.run_load_test``) runs in ``tests/test_serve.py`` against a fake policy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

from core.jsonable import jsonable, write_json
from policy.client import ENCODINGS, connect, format_load_report, run_load_test

_NO_CAPS = ["--max-buffered-mb", "1000000", "--max-concurrent", "1000000"]


# ----------------------------------------------------------------------------------------------------------------------
# Server side (internal: --serve-tiny)


class TinyPolicy:
    """A PolicyLike with the demo policy's shapes (W=2 frames of 64 x 64, H=4 x A=7) and ``act_ms`` of work."""

    def __init__(self, act_ms: float):
        self.act_ms = act_ms

    def metadata(self) -> dict:
        return {"image_size": 64, "history_offsets": [-2, 0], "action_dim": 7, "chunk": 4, "recipe": "tiny"}

    def reset(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def act(self, images: np.ndarray, instruction: str, *, seed: int = 0) -> np.ndarray:
        out = np.full((4, 7), images.mean() / 255 + seed * 1e-3, np.float32)
        time.sleep(self.act_ms / 1e3)  # a compiled forward pass: XLA releases the GIL while it computes
        return out


def _serve_tiny(argv: list[str]) -> int:
    """The policy server's own flags (``policy.serve.build_parser``) plus ``--act-ms``, around :class:`TinyPolicy`."""
    import uvicorn

    from policy.limits import ServerLimits, uvicorn_config
    from policy.serve import build_parser, create_app

    p = build_parser()
    p.add_argument("--act-ms", type=float, default=2.0)
    args = p.parse_args(["--checkpoint", "-", *argv])
    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * 2**20),
                          max_buffered_bytes=int(args.max_buffered_mb * 2**20), max_concurrent=args.max_concurrent,
                          body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                          keep_alive_s=args.keep_alive)
    app = create_app(TinyPolicy(args.act_ms), limits=limits, max_queue=args.max_queue)
    uvicorn.Server(uvicorn_config(app, limits, host=args.host, port=args.port, log_level="error")).run()
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# Flood (internal: --flood-worker)


def _flood_body(kind: str, size: int) -> tuple[bytes, str]:
    if kind == "json":  # a JSON array of numbers: what a naive client sends for a large image
        unit = b"255,"
        return b"[" + unit * ((size - 2) // len(unit)) + b"0]", "application/json"
    boundary = "floodboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"npz\"; filename=\"x.npz\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + b"\x00" * (size - len(head) - len(tail)) + tail, f"multipart/form-data; boundary={boundary}"


def _flood(url: str, clients: int, size: int, kind: str) -> int:
    """Keeps ``clients`` connections sending ``size``-byte bodies until SIGTERM; prints answer counts as JSON."""
    body, content_type = _flood_body(kind, size)
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /act HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    stop = threading.Event()
    counts: Counter = Counter()
    lock = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def one() -> str:
        with socket.create_connection((host, int(port)), timeout=30) as s:
            with contextlib.suppress(OSError):  # refused before the body was read: the answer may still be readable
                s.sendall(head + body)
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return "closed"
                data += chunk
            return data.split(b" ", 2)[1].decode()

    def worker() -> None:
        while not stop.is_set():
            try:
                status = one()
            except OSError as e:
                status = type(e).__name__
            with lock:
                counts[status] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    while not stop.is_set():
        stop.wait(0.1)
    print(json.dumps(dict(counts)), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# Orchestration (--compare)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _server(extra: list[str], act_ms: float):
    port = _free_port()
    cmd = [sys.executable, __file__, "--serve-tiny", "--port", str(port), "--act-ms", str(act_ms), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {cmd} did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _measure(url: str, pid: int, clients: int, requests: int, flood: dict | None, encoding: str) -> dict:
    stop = threading.Event()
    rss: list[int] = []
    health_ms: list[float] = []

    def sample() -> None:
        while not stop.is_set():
            rss.append(_rss_bytes(pid))
            stop.wait(0.02)

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    http.get("/health")
                    health_ms.append((time.perf_counter() - t0) * 1e3)
                except httpx.HTTPError:
                    health_ms.append(float("inf"))
                stop.wait(0.05)

    base_rss = _rss_bytes(pid)
    flood_proc = None
    if flood:
        cmd = [sys.executable, __file__, "--flood-worker", "--url", url, "--flood-clients", str(flood["clients"]),
               "--flood-mb", str(flood["mb"]), "--flood-kind", flood["kind"]]
        flood_proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    helpers = [threading.Thread(target=sample, daemon=True), threading.Thread(target=probe, daemon=True)]
    for t in helpers:
        t.start()
    flood_counts = None
    try:
        if flood:
            time.sleep(flood["ramp_s"])  # the flood is under way before the clients start
        report = run_load_test(url, clients=clients, requests_per_client=requests, encoding=encoding, timeout=120)
    finally:
        if flood_proc is not None:
            flood_proc.send_signal(signal.SIGTERM)
            out, _ = flood_proc.communicate(timeout=60)
            with contextlib.suppress(ValueError, IndexError):
                flood_counts = json.loads(out.strip().splitlines()[-1])
        stop.set()
        for t in helpers:
            t.join(30)
    h = np.asarray(health_ms)
    report.update(
        flood=flood_counts,
        rss_base_mb=base_rss / 2**20,
        rss_peak_mb=max(rss, default=0) / 2**20,
        health_p50_ms=float(np.percentile(h, 50)) if h.size else float("nan"),
        health_p99_ms=float(np.percentile(h, 99)) if h.size else float("nan"),
        health_max_ms=float(h.max()) if h.size else float("nan"),
        health_n=int(h.size),
    )
    return report


def _compare(args: argparse.Namespace) -> int:
    flood = {"clients": args.flood_clients, "mb": args.flood_mb, "kind": args.flood_kind, "ramp_s": 2.0}
    rows: list[dict] = []
    configs = {"limits": [], "no caps": _NO_CAPS}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(_server(extra, args.act_ms)) for name, extra in configs.items()}
        for url, _ in servers.values():  # warm-up: connections, first-call paths
            run_load_test(url, clients=2, requests_per_client=5, encoding=args.encoding)
        for r in range(args.rounds):
            order = [(n, c, f) for c in args.clients_list for f in (False, True) for n in configs]
            if r % 2:
                order.reverse()  # interleaved: alternate the order between rounds
            for name, clients, flooded in order:
                url, pid = servers[name]
                requests = max(1, args.requests_total // clients)
                rep = _measure(url, pid, clients, requests, flood if flooded else None, args.encoding)
                rep.update(server=name, round=r, flooded=flooded)
                rows.append(rep)
                print(_row(rep), flush=True)
    print("\n" + _table(rows, flood))
    if args.json_out:
        write_json(args.json_out, jsonable(rows))
    return 1 if any(r["errors"] for r in rows) else 0


def _row(r: dict) -> str:
    flood = ", ".join(f"{k}:{v}" for k, v in sorted((r["flood"] or {}).items())) or "-"
    return (f"| {r['round']} | {r['server']} | {r['clients']} | {'on' if r['flooded'] else 'off'} | "
            f"{r['ok']}/{r['requests']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['health_p99_ms']:.1f} | "
            f"{r['health_max_ms']:.1f} | {r['rss_base_mb']:.0f} | {r['rss_peak_mb']:.0f} | {flood} |")


def _table(rows: list[dict], flood: dict) -> str:
    head = (f"flood: {flood['clients']} connections x {flood['mb']} MB {flood['kind']} bodies; times in ms, RSS in MB\n"
            "| round | server | clients | flood | ok | p50 | p99 | /health p99 | /health max | RSS before | RSS peak "
            "| flood answers |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    return "\n".join([head, *(_row(r) for r in rows)])


# ----------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-tiny"]:
        return _serve_tiny(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--encoding", choices=ENCODINGS, default="npz")
    p.add_argument("--instruction", default="push the red block to the top left corner")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests first (compilation, connection)")
    p.add_argument("--json-out", default=None, help="also write the report (without the latency lists) as JSON")
    p.add_argument("--compare", action="store_true", help="start servers around a tiny policy; see the docstring")
    p.add_argument("--clients-list", type=int, nargs="+", default=[16, 48])
    p.add_argument("--requests-total", type=int, default=480, help="--compare: requests per run (split over clients)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--act-ms", type=float, default=2.0, help="--compare: time per policy.act of the tiny policy")
    p.add_argument("--flood-clients", type=int, default=48)
    p.add_argument("--flood-mb", type=float, default=15.0)
    p.add_argument("--flood-kind", choices=("multipart", "json"), default="multipart")
    p.add_argument("--flood-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.flood_worker:
        return _flood(args.url, args.flood_clients, int(args.flood_mb * 1e6), args.flood_kind)
    if args.compare:
        return _compare(args)

    with connect(args.url, timeout=args.timeout) as client:
        health = client.health()
        print(f"server {args.url}: {health}")
    if args.warmup:
        run_load_test(args.url, clients=1, requests_per_client=args.warmup, encoding=args.encoding,
                      instruction=args.instruction, timeout=args.timeout)
    report = run_load_test(args.url, clients=args.clients, requests_per_client=args.requests, encoding=args.encoding,
                           instruction=args.instruction, timeout=args.timeout)
    print(format_load_report(report))
    if args.json_out:
        write_json(args.json_out, report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
