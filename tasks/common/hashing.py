"""sha256 of files and of settings: the identity the manifest records for every output, the fingerprint of
inputs, and the cache keys (ingest index, weight-map cache, inference reports) that decide what to redo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["json_digest", "sha256_file"]


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def json_digest(payload: Any, length: int | None = None) -> str:
    """sha256 of ``payload`` as sorted-key JSON (the same settings give the same key in every process and
    run); the first ``length`` hex digits when given. Changing the hashed form invalidates every cache."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return digest if length is None else digest[:length]
