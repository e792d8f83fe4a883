#!/usr/bin/env python3
"""bioagents command line: serve, worker, migrate, token (SPEC §1). The commands live in
`bioagents/cli.py`; an installed package also has them as the `bioagents` command."""

import sys

from bioagents.cli import main

if __name__ == "__main__":
    sys.exit(main())
