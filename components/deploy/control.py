"""Stop or list the local servers the deploy step recorded.

Usage::

    python -m components.deploy.control stop   [--state-dir .recsynth]
    python -m components.deploy.control status [--state-dir .recsynth] [--json]

``stop`` signals a recorded PID only while ``/proc/<pid>/cmdline`` is still the serving command
it was started with, then clears the state file. ``status`` exits 1 when a recorded server is not
running or not ready, so scripts can wait on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from components.common.errors import RecsynthError
from components.common.logs import configure_logging
from components.deploy.config import DeployConfig
from components.deploy.servers import StateFile, server_status, stop_servers

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy.control", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["stop", "status"])
    parser.add_argument(
        "--state-dir",
        default=DeployConfig().state_dir,
        help="directory that holds servers.json (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    parser.add_argument(
        "--grace-s", type=float, default=10.0, help="stop: seconds between SIGTERM and SIGKILL"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    configure_logging()
    args = _parser().parse_args(argv)
    state = StateFile(args.state_dir)
    try:
        with state.locked():
            if args.command == "stop":
                results = stop_servers(state, grace_s=args.grace_s)
                if not results:
                    print(f"no recorded servers in {state.path}")
                for r in results:
                    print(f"{r['name']}: pid {r['pid']} {r['result']}")
                return 0
            rows = server_status(state.load())
    except RecsynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif not rows:
        print(f"no recorded servers in {state.path}")
    for r in [] if args.json else rows:
        health = (
            "ready" if r["ready"] else ("running, not ready" if r["running"] else "not running")
        )
        print(f"{r.get('name')}: pid {r.get('pid')} {r.get('url')} {health} (log {r.get('log')})")
    return 0 if all(r["ready"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
