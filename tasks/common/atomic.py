"""Atomic writes: every file the pipeline produces appears whole or not at all.

A crash (or SIGKILL) mid-write leaves only a hidden temporary file next to the target, never a
truncated output that a rerun would mistake for a finished one.

Outputs get the mode a plain ``open()`` would give them (0644 under the usual umask 022), so another
account (a PACS forwarder, a reporting job) can read them: the temporary is created with
``os.open(..., 0o666)`` and the kernel applies the process umask *at that moment*. ``tempfile.mkstemp``
would make it 0600 whatever the umask, and reading the umask with ``os.umask`` (set, then restore) is a
race between threads; letting the kernel apply it needs neither.
"""

from __future__ import annotations

import json
import os
import secrets
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
    tmp = _create_temporary(target)
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _create_temporary(target: Path) -> Path:
    """A new, empty hidden file beside ``target`` (exclusive create, mode 0666 less the umask)."""
    suffix = "".join(target.suffixes)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
