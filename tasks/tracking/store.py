"""MLflow wiring: where the store is, and failing early when it cannot be used.

By default the store is a SQLite file in the project folder given as an *absolute* URI (MLflow's
own default is relative to whatever the current directory happens to be) and artifacts go to
``mlartifacts/`` beside it. Any tracking URI can be configured instead; a misconfigured one is
reported before training starts, not after an hour of it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from tasks.config import TrackingConfig

logging.getLogger("alembic").setLevel(logging.WARNING)


class TrackingError(RuntimeError):
    """The MLflow store or artifact location cannot be used."""


def tracking_uri(config: TrackingConfig, root: Path) -> str:
    if config.uri:
        uri = config.uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            # sqlite:///relative.db is relative to the cwd: anchor it at the project root.
            uri = f"sqlite:///{(root / uri[len('sqlite:///'):]).resolve()}"
        return uri
    return f"sqlite:///{(root / 'mlruns.db').resolve()}"


def artifact_root(config: TrackingConfig, root: Path) -> str:
    """An artifact location URI: a plain path is anchored at the project root."""
    value = config.artifact_root
    if value is None:
        return (root / "mlartifacts").resolve().as_uri()
    if urlparse(value).scheme:  # file://, s3://, gs://, … as given
        return value
    path = Path(value)
    return (path if path.is_absolute() else root / path).resolve().as_uri()


def configure_tracking(config: TrackingConfig, root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the experiment ID.

    Raises ``TrackingError`` with the URI in the message when the store or the artifact folder
    cannot be written.
    """
    import mlflow

    uri = tracking_uri(config, root)
    artifacts = artifact_root(config, root)
    parsed = urlparse(artifacts)
    if parsed.scheme == "file":
        folder = Path(parsed.path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"artifact location {artifacts} cannot be created: {error}") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"artifact location {artifacts} is not writable")
    if uri.startswith("sqlite:///"):
        db_dir = Path(uri[len("sqlite:///"):]).parent
        if not db_dir.is_dir() or not os.access(db_dir, os.W_OK):
            raise TrackingError(f"tracking URI {uri}: folder {db_dir} does not exist or is not writable")
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(config.experiment)
        if experiment is None:
            experiment_id = mlflow.create_experiment(
                config.experiment, artifact_location=f"{artifacts.rstrip('/')}/{config.experiment}")
        else:
            experiment_id = experiment.experiment_id
    except Exception as error:  # MLflow raises transport-specific errors
        raise TrackingError(f"tracking URI {uri} cannot be used: {error}") from None
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
