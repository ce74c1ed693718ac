"""``python -m serving.soak``: soak a server given by URL, or one started here on a checkpoint."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from functools import partial
from pathlib import Path

from serving.soak.runner import SoakConfig, soak
from serving.soak.server import own_server, rss_bytes

# Small enough that a 2-core CPU keeps up with 2 requests/s of the tiny checkpoint.
MAX_NEW_TOKENS = 16


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.soak",
        description=__doc__,
        epilog="SOAK_API_KEY: the bearer key of a --url server that sets API_KEY.",
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2.0, help="requests started per second")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds per line")
    parser.add_argument("--url", help="a running server (default: start one here)")
    parser.add_argument("--pid", type=int, help="the running server's process, for its RSS")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/tiny-synthetic"))
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the soak passed, 1 when it failed, 2 when it could not run."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("serving.soak").setLevel(logging.INFO)
    config = partial(
        SoakConfig,
        minutes=args.minutes,
        rate=args.rate,
        report_every_s=args.report_every,
        seed=args.seed,
        api_key=os.environ.get("SOAK_API_KEY") or None,
    )
    try:
        if args.url:
            report = asyncio.run(soak(config(url=args.url), partial(rss_bytes, args.pid)))
        else:
            with own_server(args.checkpoint, args.max_new_tokens, args.queue_size) as target:
                report = asyncio.run(soak(config(url=target.url), partial(rss_bytes, target.pid)))
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.summary()))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
