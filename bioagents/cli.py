#!/usr/bin/env python3
"""bioagents command line: serve, worker, migrate, token (SPEC §1)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bioagents.config import ConfigError, Settings
from bioagents.jobs.spec import QUEUE_NAMES

# Every line but the token command's output goes through logging (LOG_FORMAT=json: one object).
log = logging.getLogger("bioagents")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bioagents.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="HTTP API, WebSocket hub and admin board")
    serve.add_argument("--host", help="listen address (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default PORT or 3000)")
    serve.add_argument(
        "--with-worker",
        action="store_true",
        help="queue mode: also run the workers in this process",
    )

    worker = commands.add_parser("worker", help="queue mode: run SAQ workers")
    worker.add_argument(
        "--queue",
        action="append",
        choices=QUEUE_NAMES,
        help="a queue to serve (repeatable; default both)",
    )

    commands.add_parser("migrate", help="create or upgrade the database tables")

    token = commands.add_parser("token", help="print a JWT for USER_ID")
    token.add_argument("user_id", metavar="USER_ID")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        from bioagents.logs import print_fatal

        print_fatal(f"configuration error: {error}")
        return 2

    from bioagents import logs

    logs.configure(settings)
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "worker":
        return _worker(settings, args)
    if args.command == "migrate":
        return _migrate(settings)
    return _token(settings, args)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _serve(settings: Settings, args) -> int:
    from bioagents import logs
    from bioagents.app import create_app
    from bioagents.http_server import serve_until_stopped

    _install_uvloop()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    run_workers = True if args.with_worker else None
    app = create_app(settings, run_workers=run_workers)
    serving = serve_until_stopped(
        app,
        host=host,
        port=port,
        shutdown_timeout=max(5.0, settings.shutdown_grace_seconds),
        print=logs.startup_line,
    )
    try:
        asyncio.run(serving)
    except OSError as error:  # the address is taken, or not this machine's
        log.error("cannot listen on %s:%s: %s", host, port, error.strerror or error)
        return 2
    return 0


def _worker(settings: Settings, args) -> int:
    if not settings.use_job_queue:
        log.error(
            "the worker command runs in queue mode only: set USE_JOB_QUEUE=true "
            "(in-process mode runs jobs inside `serve`)"
        )
        return 2
    from bioagents.queue_mode.services import run_worker_process

    _install_uvloop()
    return asyncio.run(run_worker_process(settings, args.queue or list(QUEUE_NAMES)))


def _migrate(settings: Settings) -> int:
    from bioagents.db import Database

    db = Database(settings.database_url)
    try:
        db.migrate()
    finally:
        db.close()
    log.info("tables are up to date (%s)", settings.database_url.split("@")[-1])
    return 0


def _token(settings: Settings, args) -> int:
    from bioagents.auth import AuthError, issue_token

    if args.ttl <= 0 or args.ttl > settings.max_jwt_expiration:
        log.error(
            "--ttl must be between 1 and MAX_JWT_EXPIRATION (%d)", settings.max_jwt_expiration
        )
        return 2
    try:
        print(issue_token(settings, args.user_id, args.ttl))
    except AuthError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
