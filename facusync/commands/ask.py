"""Asking the operator before a command destroys or rewrites something."""

from __future__ import annotations

import sys


def confirm(question: str, assume_yes: bool) -> bool:
    """Ask on the terminal; refuse (rather than guess) when nobody can answer."""
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print("not a terminal: add --yes to confirm", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes", "s", "si", "sí")
