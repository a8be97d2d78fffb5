import subprocess
import sys
from pathlib import Path

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
