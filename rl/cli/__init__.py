"""The command line: every samtok-rl command, its parser, and its one-line errors."""

from rl.cli.app import console, main

__all__ = ["console", "main"]
