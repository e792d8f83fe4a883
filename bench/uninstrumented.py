#!/usr/bin/env python3
"""`serve` (in-process mode) with the instrumentation of issue 10 taken out: no job history, no
request counting middleware, no notification counting. bench/e2e.py runs it beside the real
`serve` to measure what history and metrics cost. Not for production.

    .venv/bin/python bench/uninstrumented.py --port 3000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/queue.py would
# shadow the standard library's `queue`: put the project root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from aiohttp import web  # noqa: E402

from bioagents import logs, metrics  # noqa: E402
from bioagents.app import create_app  # noqa: E402
from bioagents.config import Settings  # noqa: E402
from bioagents.history import NotRecorded  # noqa: E402
from bioagents.keys import JOBS  # noqa: E402


async def _no_history(app: web.Application):
    app[JOBS].history = NotRecorded()
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    logs.configure(settings)
    metrics.notifications_delivered = lambda text, sockets: None  # what the hub calls
    app = create_app(settings)
    app.middlewares.remove(metrics.count_requests)
    app.cleanup_ctx.append(_no_history)  # after the services: the job queue exists then
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
