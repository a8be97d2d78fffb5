"""Serving: ``unetflow serve`` runs the deployments of ``prefect.yaml`` on a local Prefect server.

A foreground supervisor (``supervisor``) starts the Prefect server on loopback, deploys, starts a process
worker and stops them in order; the Prefect commands are in ``prefect_server``, pid files and process
groups in ``processes``. Plain functions, no Prefect import: the flows run in the worker's subprocesses,
never in the supervisor. Nothing here imports ``flows``; the CLI (``flows.cli``) calls :func:`serve` and
:func:`stop`.
"""

from tasks.serving.prefect_server import ServeError
from tasks.serving.supervisor import serve, stop

__all__ = ["ServeError", "serve", "stop"]
