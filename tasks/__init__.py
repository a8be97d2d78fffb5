"""The work of every stage as plain functions (Prefect tasks wrap them in ``flows/``), one package per stage.

``common`` and ``imaging`` hold what several stages share (atomic writes, hashing, the plan, devices,
safe image readers and writers) and import no stage; ``ingest``, ``preprocess``, ``training``,
``evaluation``, ``inference`` and ``tracking`` build on those and on ``monai_ext``; ``serving`` runs a
local Prefect server and worker for ``unetflow serve``. None of them imports ``flows``.
"""
