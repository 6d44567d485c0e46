"""`python -m openai_testserver [--port 8089] [--latency-ms 0] [--fault none] ...` (run from backend/).

Prints one JSON line `{"event": "ready", "port": ..., "base_url": ...}` on stdout once it listens, then
serves until Ctrl-C / SIGTERM. Point the service at it with `LLM_BASE_URL=<base_url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from openai_testserver.server import FAULTS, serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m openai_testserver", description=__doc__)
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port (default 8089)")
    parser.add_argument("--latency-ms", type=float, help="delay before every answer")
    parser.add_argument("--no-usage", action="store_true", help="omit `usage` from responses")
    parser.add_argument("--fault", choices=FAULTS, help="fault to serve (default none)")
    parser.add_argument("--retry-after", type=float, help="Retry-After seconds on 429/500")
    parser.add_argument("--fail-times", type=int, help="serve the fault N times, then succeed")
    parser.add_argument("--embedding-dim", type=int, help="embedding size (default 16)")
    parser.add_argument("--drip-interval-ms", type=float, help="pause between bytes for slow_drip")
    parser.add_argument("--hang-sec", type=float, help="how long `hang` holds a request")
    parser.add_argument("--rate-rpm", type=float, help="chat completions per minute; beyond: 429")
    parser.add_argument("--rate-tpm", type=float, help="tokens (prompt + max_tokens) per minute; beyond: 429")
    parser.add_argument("--options-json", default="{}", help="any ServerOptions as a JSON object")
    args = parser.parse_args(argv)

    options = json.loads(args.options_json)
    flags = {
        "latency_ms": args.latency_ms,
        "fault": args.fault,
        "retry_after": args.retry_after,
        "fail_times": args.fail_times,
        "embedding_dim": args.embedding_dim,
        "drip_interval_ms": args.drip_interval_ms,
        "hang_sec": args.hang_sec,
        "rate_rpm": args.rate_rpm,
        "rate_tpm": args.rate_tpm,
    }
    options.update({name: value for name, value in flags.items() if value is not None})
    if args.no_usage:
        options["usage"] = False
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve_forever(port=args.port, options=options))


if __name__ == "__main__":
    main()
