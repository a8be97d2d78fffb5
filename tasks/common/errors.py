"""The one exception of ingest: a case that cannot enter the dataset, with the file and the reason."""

from __future__ import annotations


class CaseRejected(Exception):
    """A case that cannot enter the dataset; the message says which file and why."""
