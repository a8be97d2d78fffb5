"""Names that are safe to use: case IDs, file names in messages, pseudonyms for DICOM series.

A case ID becomes a file name in the canonical folder and a token in logs, so it must not be able
to escape the folder (``/``, ``..``), reach a shell (metacharacters, a leading ``-``) or forge a log
line (newlines). Unsafe names are refused, not rewritten: a silently rewritten ID could collide
with another case. Text that quotes a file name is escaped instead (``printable``), so a hostile
name is still shown — harmlessly — in the report that names the bad case.

DICOM folder and file names are often patient names; ``redact`` hides any path component that
carries the patient's name or ID, and ``pseudonym`` derives case IDs from UIDs, never from tags
that identify the patient.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

_SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe_case_id(raw: str) -> str | None:
    """The case ID if it is safe as a file name and a log token, else None (the case is refused)."""
    if not _SAFE_CASE_ID.match(raw) or ".." in raw:
        return None
    return raw


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a file name cannot start a new log line."""
    return _UNPRINTABLE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def unsafe_id(raw: str) -> str:
    """A stable, safe stand-in ID for a case whose own name was refused (for the report only)."""
    return "unsafe-" + hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def pseudonym(salt: str, *uids: str) -> str:
    """A short, salted hash of DICOM UIDs: stable across runs, unlinkable to the patient without the salt."""
    digest = hashlib.sha256("\x00".join((salt, *uids)).encode()).hexdigest()
    return f"dcm-{digest[:12]}"


def identity_tokens(patient_name: str, patient_id: str) -> set[str]:
    """Lower-case fragments of PatientName (``^``-separated parts) and PatientID worth hiding (≥ 3 chars)."""
    parts = re.split(r"[\^\s,=]+", patient_name or "") + [patient_id or ""]
    return {part.lower() for part in parts if len(part.strip()) >= 3}


def carries_identity(text: str, tokens: Iterable[str]) -> bool:
    lowered = text.lower()
    return any(token in lowered for token in tokens)


def redact(path: Path, root: Path, tokens: Iterable[str]) -> str:
    """``path`` relative to ``root`` for messages, with components naming the patient hidden."""
    tokens = set(tokens)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = (path.name,)
    return printable("/".join("<redacted>" if carries_identity(part, tokens) else part for part in parts))
