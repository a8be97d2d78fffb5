import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import run
from tests.ingest.makers import save_nifti

BIN = Path(sys.executable).parent


def test_help_lists_every_subcommand():
    out = subprocess.run([str(BIN / "unetflow"), "--help"], capture_output=True, text=True, encoding="utf-8",
                         check=True).stdout
    for command in ("demo", "ingest", "preprocess", "train", "evaluate", "infer", "retrain", "serve", "serve-stop"):
        assert command in out


def test_bad_params_refused_before_any_work(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: -3\n  colour: blue\n")
    done = subprocess.run([str(BIN / "unetflow"), "demo", "--root", str(tmp_path)], capture_output=True,
                          text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 2
    assert "train.colour" in done.stderr and "train.epochs" in done.stderr
    # Nothing was started: no data written, no flow run, no store created.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_bad_override_refused(tmp_path):
    done = subprocess.run([str(BIN / "unetflow"), "train", "--root", str(tmp_path), "--set", "model.name=vnet"],
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 2 and "unknown network 'vnet'" in done.stderr


def test_a_failed_run_ends_with_one_error_line_and_debug_shows_the_traceback(tmp_path):
    """Nothing accepted (the only image is not gzip): exit 1 and one `error:` line, no traceback, no absolute
    path; `unetflow --debug` shows Prefect's and Python's tracebacks. Two Prefect starts: the slow part."""
    root = tmp_path / "project"
    save_nifti(np.zeros((8, 8, 4), np.uint8), root / "data" / "labels" / "a.nii.gz")
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "images" / "a.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "params.yaml").write_text("data:\n  source: pairs\n  instance_labels: false\n"
                                      "  label_names: {background: 0, organ: 1}\n")
    done = run([str(BIN / "unetflow"), "ingest", "--root", str(root)], root, tmp_path, check=False)
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert done.returncode == 1, output[-4000:]
    assert len(errors) == 1 and "0 accepted" in errors[0], output[-4000:]
    assert "Traceback" not in output
    assert "images/a.nii.gz: unreadable image" in output  # the summary still names the file, relative
    for where in {str(tmp_path), str(tmp_path.resolve())}:
        assert where not in output

    debug = run([str(BIN / "unetflow"), "--debug", "ingest", "--root", str(root)], root, tmp_path, check=False)
    assert debug.returncode == 1
    assert debug.stderr.count("Traceback (most recent call last)") == 2  # Prefect's log and Python's
    assert "NothingAccepted" in debug.stderr
    assert not any(line.startswith("error:") for line in (debug.stdout + debug.stderr).splitlines())
