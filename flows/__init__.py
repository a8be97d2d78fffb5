"""Prefect flows of unetflow, one module per flow, plus the ``unetflow`` CLI (``flows.cli``).

Importing this package turns off the telemetry that Prefect, DVC and MLflow would otherwise try
to send (a machine without internet waits on it), and forwards the ``unetflow.*`` loggers of the
plain task functions to Prefect's run logs. Values a user already set are kept.
"""

import logging as _logging
import os

for _name, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "unetflow",
    "GIT_PYTHON_REFRESH": "quiet",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # The ephemeral server migrates a new database on its first start: 20 s is too short on 2 cores.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_name, _value)

_logging.getLogger("unetflow").setLevel(_logging.INFO)
