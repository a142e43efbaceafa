"""Concurrent load test against a running policy server (``python -m policy.serve ...``).

    python scripts/serve_load_test.py --url http://127.0.0.1:8000 [--clients 8] [--requests 50] [--encoding npz]

Each client thread keeps one keep-alive connection and sends ``--requests`` back-to-back ``/act`` calls with random
frames of the server's expected shape (from ``/metadata``). Prints the round-trip p50/p99, the time in the server and
inside ``policy.act``, the throughput and any errors; exits 1 if any request failed. The same code
(``policy.client.run_load_test``) runs in ``tests/test_serve.py`` against a fake policy.
"""

from __future__ import annotations

import argparse
import json
import sys

from policy.client import ENCODINGS, PolicyClient, format_load_report, run_load_test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--encoding", choices=ENCODINGS, default="npz")
    p.add_argument("--instruction", default="push the red block to the top left corner")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests first (compilation, connection)")
    p.add_argument("--json-out", default=None, help="also write the report (without the latency lists) as JSON")
    args = p.parse_args(argv)

    with PolicyClient(args.url, timeout=args.timeout) as client:
        health = client.health()
        print(f"server {args.url}: {health}")
    if args.warmup:
        run_load_test(
            args.url,
            clients=1,
            requests_per_client=args.warmup,
            encoding=args.encoding,
            instruction=args.instruction,
            timeout=args.timeout,
        )
    report = run_load_test(
        args.url,
        clients=args.clients,
        requests_per_client=args.requests,
        encoding=args.encoding,
        instruction=args.instruction,
        timeout=args.timeout,
    )
    print(format_load_report(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    from core import cli

    cli.run(main, sys.argv[1:])
