"""Atomic checkpoints: a checkpoint directory either is complete or does not exist under its final name.

The HF Trainer writes ``checkpoint-N`` file by file; a crash halfway leaves a directory that
``get_last_checkpoint`` happily resumes from. We let the Trainer write into ``<run>/.staging/`` instead and
rename the finished directory to ``<run>/checkpoint-N`` (one ``os.replace``, atomic on POSIX). The
``COMPLETE`` marker is written last inside staging, so even a checkpoint copied by hand can be checked.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

STAGING = ".staging"
MARKER = "COMPLETE"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def staging_dir(run_dir: str | os.PathLike) -> str:
    return os.path.join(run_dir, STAGING)


def commit(run_dir: str | os.PathLike, name: str) -> Path:
    """Move ``<run>/.staging/<name>`` to ``<run>/<name>``, replacing an older copy of the same step."""
    src = Path(staging_dir(run_dir)) / name
    dst = Path(run_dir) / name
    (src / MARKER).write_text("ok\n")
    if dst.exists():  # re-saving the same step (e.g. the final save after a periodic one)
        old = Path(staging_dir(run_dir)) / f"{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first. Half-written ones (no marker) are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def clear_staging(run_dir: str | os.PathLike) -> None:
    """Drop what a crashed save left behind; called when a run starts."""
    shutil.rmtree(staging_dir(run_dir), ignore_errors=True)
