"""Run names and column tags that tell runs apart in the MLflow runs list.

MLflow names an unnamed run from Python's ``random``, which the trainer seeds before the run starts, so
every run got the same generated name. A name built from what differs between runs (the variant, 2D or
3D, the data version, when it started) says which run is which without opening it; the tags repeat those
facts one per key, so the UI can show them as columns, sort and filter on them.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from pathlib import Path

from tasks.common.plan import Plan
from tasks.config import Params


def _dvc_data_md5(root: Path) -> str | None:
    """The md5 ``data.dvc`` records for the raw inbox (``None`` when the data is not under DVC)."""
    import yaml

    path = root / "data.dvc"
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
    md5 = outs[0].get("md5")
    return str(md5).removesuffix(".dir") if md5 else None


def data_version(params: Params, root: Path) -> str:
    """``ds`` + 7 hex digits naming the data a run trained on: the DVC md5 of ``data/`` when it is tracked,
    else a hash of ingest's manifest (``dataset.json``), else ``nodata``. Short enough for a run name."""
    md5 = _dvc_data_md5(root)
    if md5 is None:
        manifest = root / params.data.dataset_dir / "dataset.json"
        if not manifest.exists():
            return "nodata"
        md5 = hashlib.md5(manifest.read_bytes(), usedforsecurity=False).hexdigest()
    return f"ds{md5[:7]}"


def run_name(params: Params, plan: Plan, root: Path, prefix: str | None = None, now: datetime | None = None,
             variant: str | None = None) -> str:
    """``[prefix-]unet-2d-ds1a2b3c-20261130-1012-7f3a``: variant (``params.model.name`` unless given), dims,
    data version, start time (local, to the minute) and 4 hex digits from ``secrets`` (not the seeded
    ``random``), so two runs started in the same minute on the same data still differ."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M")
    parts = [prefix] if prefix else []
    parts += [variant or params.model.name, f"{plan.spatial_dims}d", data_version(params, root), stamp,
              secrets.token_hex(2)]
    return "-".join(parts)


def column_tags(params: Params, plan: Plan, root: Path) -> dict[str, str]:
    """The headline facts of a run as short ``unetflow.*`` tags, one per column in the runs table."""
    return {"unetflow.model": params.model.name, "unetflow.dims": f"{plan.spatial_dims}d",
            "unetflow.data_version": data_version(params, root), "unetflow.epochs": str(params.train.epochs),
            "unetflow.classes": ",".join(name for name, index in sorted(plan.label_names.items(),
                                                                        key=lambda item: item[1]) if index > 0)}
