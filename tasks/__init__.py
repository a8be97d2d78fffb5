"""The work of every stage as plain functions (Prefect tasks wrap them in ``flows/``), one package per stage.

``common`` and ``imaging`` hold what several stages share (atomic writes, hashing, the plan, devices,
safe image readers and writers); ``ingest``, ``preprocess``, ``training``, ``evaluation``, ``inference``
and ``tracking`` each import from those and from ``monai_ext``, never from a later stage's package.
"""
