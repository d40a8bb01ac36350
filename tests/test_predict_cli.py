"""`python -m medvision predict`: outputs, volumetry summary, and clean failures (one stderr line naming
the file, non-zero exit, no traceback, no output left behind)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvision.checkpoint import save_checkpoint
from medvision.cli import main
from medvision.models import AttentionUNet

MODALITY_FILES = ("flair", "t1", "t1ce", "t2")
CASE_ID = "Synth_042"
NIFTI_SHAPE = (40, 36, 10)  # (i, j, k): 10 axial slices
AFFINE = np.array([[-1.0, 0, 0, 80], [0, -1.0, 0, 100], [0, 0, 1.5, -30], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = AttentionUNet(4, 3, 4, 2, 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, {"target": "regions", "neighbours": 0, "patch_size": [48, 48]})
    return path


def write_case_folder(root: Path) -> Path:
    """A BraTS-2021-style folder with four int16 modalities (a bright blob inside an ellipse of brain)."""
    folder = root / CASE_ID
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    i, j, k = np.meshgrid(*(np.arange(s) for s in NIFTI_SHAPE), indexing="ij")
    brain = ((i - 20) / 15) ** 2 + ((j - 18) / 14) ** 2 < 1
    brain &= (k >= 1) & (k <= 8)
    for c, name in enumerate(MODALITY_FILES):
        data = np.where(brain, 300 + 40 * c + 20 * rng.standard_normal(NIFTI_SHAPE), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(data, AFFINE), folder / f"{CASE_ID}_{name}.nii.gz")
    return folder


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["predict", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code: int, err: str, name: str, out_dir: Path) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert name in lines[0] and "Traceback" not in err
    assert not [p for p in out_dir.iterdir()], "a failed run left files behind"


def test_predict_writes_label_probabilities_uncertainty_and_report(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_case_folder(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        [
            folder,
            "-o",
            out / "pred.nii.gz",
            "--checkpoint",
            checkpoint,
            "--device",
            "cpu",
            "--mc-samples",
            "2",
            "--tta",
            "--report",
            out / "report.csv",
            "--probabilities",
            out / "probs.nii.gz",
            "--uncertainty",
            out / "unc.nii.gz",
        ],
        capsys,
    )
    assert code == 0, err
    assert CASE_ID in stdout and "volumes (cm^3): WT" in stdout and "uncertainty score" in stdout
    label = nib.load(out / "pred.nii.gz")
    assert label.shape == NIFTI_SHAPE and label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label.affine, AFFINE)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 4}
    assert nib.load(out / "probs.nii.gz").shape == (*NIFTI_SHAPE, 3)
    assert nib.load(out / "unc.nii.gz").shape == NIFTI_SHAPE
    header, row = (out / "report.csv").read_text().splitlines()
    assert header.startswith("case_id,WT_cm3,TC_cm3,ET_cm3") and row.startswith(CASE_ID + ",")
    assert sorted(p.name for p in out.iterdir()) == [
        "pred.nii.gz",
        "probs.nii.gz",
        "report.csv",
        "unc.nii.gz",
    ]


def test_missing_input(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(
        [tmp_path / "no_such_case", "-o", out / "p.nii.gz", "--checkpoint", checkpoint], capsys
    )
    assert_clean_failure(code, err, "no_such_case", out)


def test_corrupt_gzip(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_case_folder(tmp_path / "in")
    t1 = folder / f"{CASE_ID}_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:200])  # truncated gzip stream
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli([folder, "-o", out / "p.nii.gz", "--checkpoint", checkpoint], capsys)
    assert_clean_failure(code, err, t1.name, out)


def test_garbage_gzip(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_case_folder(tmp_path / "in")
    t2 = folder / f"{CASE_ID}_t2.nii.gz"
    t2.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli([folder, "-o", out / "p.nii.gz", "--checkpoint", checkpoint], capsys)
    assert_clean_failure(code, err, t2.name, out)


def test_missing_modality(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_case_folder(tmp_path / "in")
    (folder / f"{CASE_ID}_t1ce.nii.gz").unlink()
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli([folder, "-o", out / "p.nii.gz", "--checkpoint", checkpoint], capsys)
    assert_clean_failure(code, err, CASE_ID, out)
    assert "t1ce" in err


def test_bad_options_fail_before_work(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_case_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli([folder, "-o", out / "p.png", "--checkpoint", checkpoint], capsys)
    assert_clean_failure(code, err, "p.png", out)
    code, _, err = run_cli(
        [folder, "-o", out / "p.nii.gz", "--checkpoint", checkpoint, "--uncertainty", out / "u.nii.gz"],
        capsys,
    )
    assert_clean_failure(code, err, "u.nii.gz", out)
    code, _, err = run_cli(
        [folder, "-o", out / "p.nii.gz", "--checkpoint", tmp_path / "missing.safetensors"], capsys
    )
    assert_clean_failure(code, err, "missing", out)


def test_missing_demo_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    import medvision.inference.predictor as predictor_module

    monkeypatch.setattr(
        predictor_module, "DEFAULT_CHECKPOINT", tmp_path / "checkpoints" / "default.safetensors"
    )
    folder = write_case_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli([folder, "-o", out / "p.nii.gz"], capsys)
    assert_clean_failure(code, err, "default.safetensors", out)
    assert "--checkpoint" in err


def test_failed_write_removes_earlier_outputs(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_case_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is expected")
    code, _, err = run_cli(
        [folder, "-o", out / "p.nii.gz", "--checkpoint", checkpoint, "--report", blocker / "r.csv"], capsys
    )
    assert_clean_failure(code, err, "r.csv", out)


def test_subprocess_error_has_no_traceback(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "p.nii.gz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medvision",
            "predict",
            str(tmp_path / "absent"),
            "-o",
            str(out),
            "--checkpoint",
            str(checkpoint),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "absent" in proc.stderr and not out.exists()


def test_batch_folder_output_is_resumable_and_goes_past_a_broken_case(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    root = tmp_path / "cases"
    first = write_case_folder(root)
    shutil.copytree(first, root / "Synth_043")
    broken = shutil.copytree(first, root / "Broken_001")
    flair = broken / f"{CASE_ID}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        [root, "-o", f"{out}/", "--checkpoint", checkpoint, "--device", "cpu"], capsys
    )
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["Synth_042.nii.gz", "Synth_043.nii.gz"]
    assert "batch: 2 predicted, 0 skipped (already done), 1 failed" in stdout
    assert f"failed: Broken_001: {flair}" in err and "Traceback" not in err
    assert nib.load(out / "Synth_043.nii.gz").shape == NIFTI_SHAPE
    # Run again (after a stop, or once the broken case is mended): what was done is not redone.
    shutil.copy(first / flair.name, flair)
    code, stdout, err = run_cli([root, "-o", out, "--checkpoint", checkpoint, "--device", "cpu"], capsys)
    assert code == 0, err
    assert stdout.count("exists, skipped") == 2 and "batch: 1 predicted, 2 skipped" in stdout
    assert (out / "Broken_001.nii.gz").exists()


def test_batch_shards_split_the_items_between_ranks() -> None:
    from medvision.commands.predict_batch import BatchShardError, Shard, shard_from_env

    items = [Path(f"case_{i}") for i in range(5)]
    shares = [Shard(rank, 2).take(items) for rank in range(2)]
    assert [n for n, _ in shares[0]] == [1, 3, 5] and [n for n, _ in shares[1]] == [2, 4]
    assert sorted(item for share in shares for _, item in share) == items  # each item once
    assert Shard().take(items) == list(enumerate(items, start=1)) and Shard().prefix == ""
    assert shard_from_env({}) == Shard()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert shard_from_env(env) == Shard(3, 4, 1, 2)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(BatchShardError):
            shard_from_env(bad)


def test_batch_under_torchrun_spreads_the_cases_over_two_processes(tmp_path: Path, checkpoint: Path) -> None:
    import shutil

    root = tmp_path / "cases"
    first = write_case_folder(root)
    for name in ("Synth_043", "Synth_044"):
        shutil.copytree(first, root / name)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "medvision", "predict", str(root), "-o", f"{out}/", "--checkpoint", str(checkpoint)]
    command += ["--device", "cpu"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"Synth_04{i}.nii.gz" for i in (2, 3, 4)]
    # Rank 0 took cases 1 and 3, rank 1 case 2; each said so.
    assert "[rank 0/2] [1/3] Synth_042" in proc.stdout and "[rank 0/2] [3/3] Synth_044" in proc.stdout
    assert "[rank 1/2] [2/3] Synth_043" in proc.stdout
    assert "[rank 0/2] batch: 2 predicted" in proc.stdout and "[rank 1/2] batch: 1 predicted" in proc.stdout


def test_batch_refuses_single_file_options(tmp_path: Path, checkpoint: Path, capsys) -> None:
    root = tmp_path / "cases"
    write_case_folder(root)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli(
        [root, "-o", out, "--checkpoint", checkpoint, "--report", tmp_path / "r.csv"], capsys
    )
    assert_clean_failure(code, err, "--report", out)


REAL_CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2021_00006"


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data")
def test_the_shipped_model_predicts_t1ce_alone_with_its_t1ce_route(tmp_path: Path, capsys) -> None:
    """Tried as a new user would with only a contrast T1 of the real case (a training case of the shipped
    model, so the Dice only shows the route works, not how well it generalises): the T1ce network predicts
    it, and T1 + T1ce gives exactly the same label (T1 is set aside for that route)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("t1", "t1ce"):
        shutil.copy(REAL_CASE / f"BraTS2021_00006_{name}.nii.gz", folder)  # links are refused, rightly
    labels = {}
    for subset in ("t1ce", "t1+t1ce"):
        out = tmp_path / f"{subset}.nii.gz"
        code, stdout, err = run_cli([folder, "-o", out, "--modalities", subset], capsys)
        assert code == 0, err
        assert "more for t1ce alone" in stdout and "modalities used: t1ce" in stdout
        assert ("t1 given but set aside" in stdout) == (subset == "t1+t1ce")
        labels[subset] = np.asarray(nib.load(out).dataobj)
    assert np.array_equal(labels["t1ce"], labels["t1+t1ce"])
    truth = np.asarray(nib.load(REAL_CASE / "BraTS2021_00006_seg.nii.gz").dataobj) > 0
    predicted = labels["t1ce"] > 0
    assert 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) > 0.5


def test_the_shipped_default_model_fits_its_size_limit_and_loads_on_a_cpu() -> None:
    """The issue's limit for checkpoints/default.*: at most 20 MB, loadable on a CPU."""
    from medvision.checkpoint import load_checkpoint

    weights = Path(__file__).resolve().parents[1] / "checkpoints" / "default.safetensors"
    assert weights.stat().st_size <= 20 * 2**20, f"{weights.stat().st_size / 2**20:.1f} MB"
    model, meta = load_checkpoint(weights, device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "cpu" and meta["model"]["members"] >= 1
