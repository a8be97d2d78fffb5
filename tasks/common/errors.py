"""The one exception for bad input data: a case that cannot be ingested or segmented, with the file and the reason.

Ingest turns it into a rejected case, inference into a failed case; neither stops the batch. It lives
here because both stages raise it (through the shared readers in ``tasks.imaging``).
"""

from __future__ import annotations


class CaseRejected(Exception):
    """A case that cannot be used as it is; the message names the file (relative to its inbox) and why."""
