"""Where the board's `templates/` and `static/` folders are: at the top of a checkout (the
layout of the repository), or inside the package when installed from a wheel (pyproject.toml
ships them there as package data)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The `templates` or `static` folder of this installation."""
    for base in (PACKAGE.parent, PACKAGE):
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"the {name}/ folder is missing from this installation")
