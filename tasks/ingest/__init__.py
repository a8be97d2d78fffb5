"""Ingest: an inbox of NIfTI or DICOM studies → one canonical, validated, DVC-versioned dataset.

Entry points: :func:`plan_ingest` (find the cases, recall the last run), :func:`ingest_case` (validate
and write one case, never raising for bad data), :func:`finish_ingest` (``dataset.json``, ``rejected.json``,
the index); :func:`ingest_dataset` runs all three without Prefect.
"""

from tasks.ingest.batch import IngestPlan, finish_ingest, ingest_dataset, plan_ingest, summary_table
from tasks.ingest.case import CaseResult, ingest_case
from tasks.ingest.index import IngestSettings

__all__ = ["CaseResult", "IngestPlan", "IngestSettings", "finish_ingest", "ingest_case", "ingest_dataset",
           "plan_ingest", "summary_table"]
