"""A ``.nii.gz`` whose header claims more than the file holds is refused before nibabel allocates the claim,
in little memory; real, highly compressible files are still read; reasons never show an absolute path."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tasks.common.errors import CaseRejected
from tasks.config import DataConfig
from tasks.imaging.gzip_bounds import max_inflated_size
from tasks.imaging.nifti_reader import read_nifti
from tasks.imaging.nifti_writer import save_nifti_gz
from tasks.ingest.batch import ingest_dataset
from tests.conftest import REPO
from tests.ingest.makers import LABELS, save_nifti

MAX_VOXELS = 1_000_000_000  # data.max_voxels' default
MB = 1024 * 1024

#: Runs in a fresh interpreter: the peak RSS a refusal adds over the interpreter after imports and one
#: warm-up read, and the peak of Python's (and numpy's) allocations during it. The peak is the kernel's
#: VmHWM, reset to the current RSS first (``ru_maxrss`` would not do: it survives exec, so a child of
#: pytest starts at pytest's peak). Address space is capped 1 GiB above the baseline, so a broken guard
#: fails here with a MemoryError instead of taking the shared machine's memory.
PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    import nibabel as nib, numpy as np
    from tasks.common.errors import CaseRejected
    from tasks.imaging.nifti_reader import read_nifti

    def peak_kib():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(fields["VmHWM"].split()[0])

    path, warm, max_voxels = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), warm)
    read_nifti(__import__("pathlib").Path(warm), "warm.nii.gz", max_voxels=max_voxels, geometry_tolerance=1e-4)
    pages = int(open("/proc/self/statm").read().split()[0])
    address_space = pages * resource.getpagesize() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # VmHWM := VmRSS (without it: the peak since exec, imports included)
    except OSError:
        pass
    before = peak_kib()
    tracemalloc.start()
    try:
        read_nifti(__import__("pathlib").Path(path), "bomb.nii.gz", max_voxels=max_voxels, geometry_tolerance=1e-4)
        outcome = {"code": None, "message": "read"}
    except CaseRejected as error:
        outcome = {"code": error.code, "message": str(error)}
    allocated = tracemalloc.get_traced_memory()[1]
    after = peak_kib()
    print(json.dumps({**outcome, "peak_kib": after - before, "allocated_peak": allocated}))
""")


def forged_header(shape: tuple[int, ...], dtype: type) -> bytes:
    """A NIfTI header as nib.save writes it (data at 352, sform and qform agree), claiming ``shape`` × ``dtype``;
    every check but the file's length passes, so only the length guards stand between it and nibabel."""
    image = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), np.eye(4))
    header = image.header
    header.set_data_shape(shape)
    header.set_data_offset(352)  # 0 would make nibabel read the header as voxels
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    return header.binaryblock + b"\0" * 4


def header_only_gz(path: Path, shape: tuple[int, ...], dtype: type, payload: int = 50_000_000) -> Path:
    """A forged header followed by ``payload`` zero bytes, gzipped (~50 kB for the default)."""
    path.write_bytes(gzip.compress(forged_header(shape, dtype) + b"\0" * payload, compresslevel=6))
    return path


def refuse_in_fresh_process(path: Path, tmp_path: Path, max_voxels: int = MAX_VOXELS) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(path), str(tmp_path / "warm.nii.gz"), str(max_voxels)],
                          cwd=REPO, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def read(path: Path, max_voxels: int = MAX_VOXELS) -> np.ndarray:
    return read_nifti(path, path.name, max_voxels=max_voxels, geometry_tolerance=1e-4).data


def test_a_50kb_file_claiming_1gb_of_int16_is_refused_in_little_memory(tmp_path: Path):
    bomb = header_only_gz(tmp_path / "bomb.nii.gz", (1000, 1000, 500), np.int16)
    size = bomb.stat().st_size
    assert 30_000 < size < 80_000
    outcome = refuse_in_fresh_process(bomb, tmp_path)
    assert outcome["peak_kib"] * 1024 < 50 * MB and outcome["allocated_peak"] < 50 * MB, outcome
    assert outcome["code"] == "truncated", outcome
    assert outcome["message"] == (f"bomb.nii.gz: header claims 1000000000 bytes of image voxels, "
                                  f"more than a {size}-byte gzip file can hold")


def test_a_float64_claim_just_under_max_voxels_is_refused_in_little_memory(tmp_path: Path):
    shape = (1000, 1000, 999)  # 999 million voxels, 8 GB of float64
    assert np.prod(shape) < MAX_VOXELS
    bomb = header_only_gz(tmp_path / "bomb.nii.gz", shape, np.float64)
    outcome = refuse_in_fresh_process(bomb, tmp_path)
    assert outcome["peak_kib"] * 1024 < 50 * MB and outcome["allocated_peak"] < 50 * MB, outcome
    assert outcome["code"] == "truncated", outcome
    assert "header claims 7992000000 bytes of image voxels, more than a" in outcome["message"]


def test_a_stream_cut_short_within_the_ratio_bound_is_counted_not_allocated(tmp_path: Path):
    """200 MB of zeros, gzipped, minus its last 64 bytes: deflate could hold the claim, the stream does not."""
    whole = tmp_path / "whole.nii.gz"
    with gzip.open(whole, "wb", compresslevel=6) as handle:
        handle.write(forged_header((1000, 1000, 100), np.int16))
        for _ in range(100):
            handle.write(bytes(2_000_000))
    blob = whole.read_bytes()
    cut = tmp_path / "bomb.nii.gz"
    cut.write_bytes(blob[:-64])
    needed = 352 + 200_000_000
    assert max_inflated_size(len(blob) - 64) >= needed  # the ratio bound alone cannot refuse it
    outcome = refuse_in_fresh_process(cut, tmp_path)
    assert outcome["peak_kib"] * 1024 < 50 * MB and outcome["allocated_peak"] < 50 * MB, outcome
    assert outcome["code"] == "truncated", outcome
    assert outcome["message"].startswith("bomb.nii.gz: image data is truncated or corrupt (the gzip stream ends "
                                         "after "), outcome
    assert f"the header needs {needed})" in outcome["message"]


def zeros_nii(tmp_path: Path) -> tuple[np.ndarray, bytes]:
    """200×200×100 int16 zeros (8 MB) and its uncompressed .nii bytes."""
    data = np.zeros((200, 200, 100), np.int16)
    save_nifti(data, tmp_path / "zeros.nii")
    return data, (tmp_path / "zeros.nii").read_bytes()


@pytest.mark.parametrize("level", [1, 6, 9])
def test_zeros_compressed_near_deflates_best_ratio_are_still_read(tmp_path: Path, level: int):
    data, raw = zeros_nii(tmp_path)
    target = tmp_path / f"zeros{level}.nii.gz"
    target.write_bytes(gzip.compress(raw, compresslevel=level))
    assert np.array_equal(read(target), data)
    if level == 9:
        assert len(raw) / target.stat().st_size > 1000  # the ratio is really close to deflate's 1032


def test_zeros_written_by_nibabel_and_by_our_writer_are_still_read(tmp_path: Path):
    data, _ = zeros_nii(tmp_path)
    save_nifti(data, tmp_path / "nibabel.nii.gz")  # nibabel's default level
    for level in (1, 2):  # ISA-L: ~1027:1 on zeros
        save_nifti_gz(data, np.eye(4), tmp_path / f"ours{level}.nii.gz", level=level)
    for name in ("nibabel.nii.gz", "ours1.nii.gz", "ours2.nii.gz"):
        assert np.array_equal(read(tmp_path / name), data), name


def test_multi_member_and_padded_gzip_files_are_not_judged_by_their_last_trailer(tmp_path: Path):
    """``cat a.gz b.gz`` (and bgzip's empty last block) end in the last member's size, not the stream's."""
    data = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    save_nifti(data, tmp_path / "plain.nii")
    raw = (tmp_path / "plain.nii").read_bytes()
    members = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])
    (tmp_path / "members.nii.gz").write_bytes(members + gzip.compress(b""))
    (tmp_path / "padded.nii.gz").write_bytes(gzip.compress(raw) + b"\0" * 4096)
    for name in ("members.nii.gz", "padded.nii.gz"):
        assert np.array_equal(read(tmp_path / name), data), name
    short = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:-8])
    (tmp_path / "short.nii.gz").write_bytes(short + gzip.compress(b""))
    with pytest.raises(CaseRejected, match=r"short.nii.gz: image data is truncated or corrupt \(the gzip stream "
                                           rf"ends after {len(raw) - 8} bytes, the header needs {len(raw)}\)"):
        read(tmp_path / "short.nii.gz")


def test_a_gz_cut_in_the_middle_is_refused_as_truncated(tmp_path: Path):
    save_nifti(np.random.default_rng(1).normal(size=(32, 32, 16)).astype(np.float32), tmp_path / "cut.nii.gz")
    blob = (tmp_path / "cut.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CaseRejected, match=r"^cut.nii.gz: image data is truncated or corrupt") as caught:
        read(tmp_path / "cut.nii.gz")
    assert caught.value.code == "truncated"
    assert "the gzip stream ends after" in str(caught.value)  # counted before nibabel allocated the claim


def test_reasons_name_files_relative_to_the_inbox_never_by_absolute_path(tmp_path: Path):
    raw = tmp_path / "raw"
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:5, 2:5, 1:3] = 1
    for case in ("good", "notgz", "cut", "bomb"):
        save_nifti(label, raw / "labels" / f"{case}.nii.gz")
    save_nifti(np.random.default_rng(2).normal(size=(8, 8, 4)).astype(np.float32), raw / "images" / "good.nii.gz")
    save_nifti(np.random.default_rng(3).normal(size=(8, 8, 4)).astype(np.float32), raw / "images" / "notgz.nii")
    (raw / "images" / "notgz.nii").rename(raw / "images" / "notgz.nii.gz")  # an uncompressed file named .gz
    save_nifti(np.random.default_rng(4).normal(size=(24, 24, 12)).astype(np.float32), raw / "images" / "cut.nii.gz")
    blob = (raw / "images" / "cut.nii.gz").read_bytes()
    (raw / "images" / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    header_only_gz(raw / "images" / "bomb.nii.gz", (1000, 1000, 500), np.int16, payload=10_000)

    manifest, results = ingest_dataset(raw, tmp_path / "out", DataConfig(
        source="pairs", instance_labels=False, label_names=LABELS))
    assert [c["case_id"] for c in manifest["cases"]] == ["good"]
    reasons = {r.case_id: r.reason for r in results if not r.accepted}
    assert reasons["notgz"].startswith("images/notgz.nii.gz: unreadable image (")
    assert "File images/notgz.nii.gz is not a gzip file" in reasons["notgz"]  # nibabel's words, our name
    assert reasons["cut"].startswith("images/cut.nii.gz: image data is truncated or corrupt")
    assert reasons["bomb"].startswith("images/bomb.nii.gz: header claims 1000000000 bytes of image voxels")
    rejected = (tmp_path / "out" / "rejected.json").read_text(encoding="utf-8")
    for where in {str(tmp_path), str(tmp_path.resolve())}:
        assert not any(where in reason for reason in reasons.values()), reasons
        assert where not in rejected
    assert sorted(r["code"] for r in json.loads(rejected)["rejected"]) == ["truncated", "truncated", "unreadable"]


def test_library_errors_quoting_other_absolute_paths_are_shortened(tmp_path: Path):
    from tasks.imaging.nifti_reader import describe_error, without_paths

    target = tmp_path / "inbox" / "a.nii.gz"
    error = OSError(f"[Errno 2] No such file or directory: '{target}' (via /usr/lib/x/libfoo.so)")
    text = describe_error(error, target, "inbox/a.nii.gz")
    assert text == "OSError: [Errno 2] No such file or directory: 'inbox/a.nii.gz' (via libfoo.so)"
    assert without_paths(f"cannot open {tmp_path}/other/b.nii.gz, 3/4 done") == "cannot open b.nii.gz, 3/4 done"


def test_inference_reads_through_the_same_guard_and_names_files_the_same_way(tmp_path: Path):
    from tasks.inference.batch import run_batch
    from tests.infer.helpers import ThresholdNet, plan_for, settings

    inbox = tmp_path / "in"
    save_nifti(np.full((8, 8, 8), 100, np.float32), inbox / "good.nii.gz")
    header_only_gz(inbox / "bomb.nii.gz", (1000, 1000, 500), np.int16, payload=10_000)
    save_nifti(np.zeros((8, 8, 8), np.float32), inbox / "notgz.nii")
    (inbox / "notgz.nii").rename(inbox / "notgz.nii.gz")
    outcomes = run_batch(inbox, tmp_path / "out", settings(), ThresholdNet(3, level=50.0), plan_for(3, [8, 8, 8]))
    by_id = {o.case_id: o for o in outcomes}
    assert by_id["good"].status == "done"
    assert by_id["bomb"].error.startswith("bomb.nii.gz: header claims 1000000000 bytes of image voxels, more than a")
    assert by_id["notgz"].error.startswith("notgz.nii.gz: unreadable image (ImageFileError: File notgz.nii.gz is not")
    summary = (tmp_path / "out" / "summary.json").read_text(encoding="utf-8")
    assert str(tmp_path) not in summary and str(tmp_path.resolve()) not in summary
