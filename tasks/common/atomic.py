"""Atomic writes: every file the pipeline produces appears whole or not at all.

A crash (or SIGKILL) mid-write leaves only a hidden temporary file next to the target, never a
truncated output that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary name keeps the target's suffixes (``.nii.gz``) so writers that pick a format
    from the extension do the right thing. A writer that finds the target already holds what it
    would write may delete the temporary: the target is then left as it is.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
