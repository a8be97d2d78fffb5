"""What every flow does first: resolve the project root and read the validated ``params.yaml``."""

from __future__ import annotations

from pathlib import Path

from tasks.config import Params, load_params


def project(root: str | Path, params_file: str | None, overrides: list[str] | None) -> tuple[Path, Params]:
    """(absolute root, params); a relative ``params_file`` is read from the root."""
    root_path = Path(root).resolve()
    path = None if params_file is None else (root_path / params_file)
    return root_path, load_params(path, overrides or [])
