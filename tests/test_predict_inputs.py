"""`predict` on scans as people have them, tried as a new user would: a real BraTS case flipped, padded and
resampled by nibabel and given as single files with odd names (``.nii.gz.gz``, NRRD); a BraTS folder of
``.nii.gz.gz`` files; options that do not fit the input; and the brain extraction on a synthetic skull."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest

from bench.brain_extraction import add_skull, dice
from medvision.cli import main
from medvision.commands.predict_inputs import load_input, strip_skull
from medvision.data.brain_extraction import apply_brain_mask, extract_brain
from medvision.data.case import MODALITIES, case_to_nifti_axes
from medvision.data.readers import read_brats_folder
from tests.test_brainix_end_to_end import save_any_subset_checkpoint
from tests.test_predict_cli import AFFINE, CASE_ID, NIFTI_SHAPE, assert_clean_failure, write_case_folder

SLICES = slice(70, 76)  # six axial slices of BraTS2021_00006 through the tumour: fast, still real


@pytest.fixture(scope="module")
def any_subset_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_any_subset_checkpoint(tmp_path_factory.mktemp("ckpt") / "any_subset.safetensors")


def _flipped_padded(image: nib.Nifti1Image, pad: int) -> nib.Nifti1Image:
    """``image`` with i reversed and ``pad`` zero voxels added around each slice (affine kept exact)."""
    data = np.asarray(image.dataobj)[::-1]
    data = np.pad(data, ((pad, pad), (pad, pad), (0, 0)))
    n_i = image.shape[0]
    flip = np.array([[-1.0, 0, 0, n_i - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    shift = np.eye(4)
    shift[:2, 3] = -pad
    return nib.Nifti1Image(data.astype(np.int16), image.affine @ flip @ shift)


def _write_nrrd(image: nib.Nifti1Image, path: Path) -> Path:
    import SimpleITK as sitk

    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # RAS+ -> ITK's LPS
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    itk = sitk.GetImageFromArray(np.asarray(image.dataobj).transpose(2, 1, 0).astype(np.float32))
    itk.SetSpacing(spacing.tolist())
    itk.SetDirection((affine[:3, :3] / spacing).flatten().tolist())
    itk.SetOrigin(affine[:3, 3].tolist())
    sitk.WriteImage(itk, str(path))
    return path


@pytest.fixture(scope="module")
def odd_files(real_case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The case's four modalities as a user might hold them: FLAIR and T1ce flipped and padded to 256^2
    (``scan_a.nii.gz`` and ``scan_b.nii.gz.gz``), T1 resampled to 0.9 mm, T2 as NRRD on yet another grid."""
    folder = tmp_path_factory.mktemp("odd")
    images = {}
    for modality in MODALITIES:
        source = nib.load(real_case_dir / f"BraTS2021_00006_{modality}.nii.gz")
        images[modality] = source.slicer[:, :, SLICES]
    files = {}
    files["flair"] = folder / "scan_a.nii.gz"
    nib.save(_flipped_padded(images["flair"], 8), files["flair"])
    files["t1ce"] = folder / "scan_b.nii.gz.gz"
    raw = _flipped_padded(images["t1ce"], 8).to_bytes()
    files["t1ce"].write_bytes(gzip.compress(gzip.compress(raw)))
    files["t1"] = folder / "t1_resampled"
    resampled = nibabel.processing.resample_to_output(images["t1"], voxel_sizes=(0.9, 0.9, 1.0), order=1)
    files["t1"].write_bytes(gzip.compress(resampled.to_bytes()))  # no extension at all
    files["t2"] = _write_nrrd(
        nibabel.processing.resample_to_output(images["t2"], (1.1, 1.1, 1.0)), folder / "t2.nrrd"
    )
    return files


def _file_args(files: dict[str, Path]) -> list[str]:
    return [a for m, p in files.items() for a in (f"--{m}", str(p))]


def _namespace(**given) -> argparse.Namespace:
    options = {m: None for m in MODALITIES} | {"input": None, "reference": None, "register": False}
    return argparse.Namespace(**(options | given))


def test_single_files_come_back_on_the_reference_grid(
    odd_files: dict[str, Path],
    any_subset_checkpoint: Path,
    tmp_path: Path,
    capsys,
) -> None:
    out = tmp_path / "seg.nii.gz"
    args = ["predict", *_file_args(odd_files), "-o", str(out), "--checkpoint", str(any_subset_checkpoint)]
    code = main([*args, "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    flair = nib.load(odd_files["flair"])
    written = nib.load(out)
    assert written.shape == flair.shape == (256, 256, 6)
    np.testing.assert_allclose(written.affine, flair.affine, atol=1e-3)
    label = np.asarray(written.dataobj)
    assert set(np.unique(label)) <= {0, 1, 2, 4}
    assert not label[:8].any() and not label[:, :8].any(), "the padding is no brain"
    assert "read t1: t1_resampled" in captured.out and "modalities used: flair, t1, t1ce, t2" in captured.out
    assert "scan is not skull-stripped" not in captured.out


def test_model_grid_round_trip_lands_on_the_brain(odd_files: dict[str, Path]) -> None:
    """The geometry alone: the model grid's brain, brought back, is the FLAIR file's brain."""
    prepared = load_input(_namespace(**{m: str(p) for m, p in odd_files.items()}))
    assert prepared.case.available == MODALITIES and prepared.export_case.shape == (6, 256, 256)
    model_brain = (prepared.case.image[0] != 0).astype(np.uint8)
    back = case_to_nifti_axes(prepared.to_export(model_brain)).astype(bool)
    truth = np.asarray(nib.load(odd_files["flair"]).dataobj) != 0
    assert dice(back, truth) > 0.98
    # T1 (0.9 mm) and T2 (NRRD, 1.1 mm) were resampled onto the FLAIR grid: their brains overlap it too.
    for channel in (1, 3):
        resampled = case_to_nifti_axes(prepared.export_case.image[channel]) > 0
        assert dice(resampled, truth) > 0.95


def test_reference_option_picks_the_grid(odd_files: dict[str, Path]) -> None:
    from medvision.data.sniff import open_any_nifti

    prepared = load_input(_namespace(reference="t1", **{m: str(p) for m, p in odd_files.items()}))
    t1 = open_any_nifti(odd_files["t1"])  # gzipped, no extension: read by content
    assert case_to_nifti_axes(prepared.export_case.image[1]).shape == t1.data.shape
    np.testing.assert_allclose(prepared.export_case.affine, t1.affine, atol=1e-3)


def test_brats_folder_of_nii_gz_gz_files_is_predicted(
    tmp_path: Path,
    any_subset_checkpoint: Path,
    capsys,
) -> None:
    folder = write_case_folder(tmp_path / "in")
    for path in sorted(folder.iterdir()):
        (folder / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert all(p.name.endswith(".nii.gz.gz") for p in folder.iterdir())
    out = tmp_path / "out" / "seg.nii.gz"
    code = main(["predict", str(folder), "-o", str(out), "--checkpoint", str(any_subset_checkpoint)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = nib.load(out)
    assert written.shape == NIFTI_SHAPE and CASE_ID in captured.out
    np.testing.assert_allclose(written.affine, AFFINE)
    case = read_brats_folder(folder)
    assert case.available == MODALITIES and case.case_id == CASE_ID


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--dicom-seg", "{out}/seg.dcm"], "--dicom-seg"),
        (["--flair", "401"], "not a DICOM study"),
        (["--reference", "t1"], "not a DICOM study"),
    ],
)
def test_options_that_do_not_fit_a_case_folder(
    tmp_path: Path,
    any_subset_checkpoint: Path,
    capsys,
    extra: list[str],
    named: str,
) -> None:
    folder = write_case_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    given = [a.format(out=out) for a in extra]
    code = main(
        [
            "predict",
            str(folder),
            "-o",
            str(out / "p.nii.gz"),
            *given,
            "--checkpoint",
            str(any_subset_checkpoint),
        ]
    )
    err = capsys.readouterr().err
    assert_clean_failure(code, err, named, out)


def test_bad_single_files(
    tmp_path: Path, odd_files: dict[str, Path], any_subset_checkpoint: Path, capsys
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    text = tmp_path / "notes.nii.gz"
    text.write_text("not a scan")
    base = ["predict", "-o", str(out / "p.nii.gz"), "--checkpoint", str(any_subset_checkpoint)]
    code = main([*base, "--flair", str(text)])
    assert_clean_failure(code, capsys.readouterr().err, "notes.nii.gz", out)
    code = main([*base, "--flair", str(odd_files["flair"]), "--reference", "t1ce"])
    assert_clean_failure(code, capsys.readouterr().err, "--reference t1ce", out)
    code = main(base)
    assert_clean_failure(code, capsys.readouterr().err, "give INPUT", out)
    code = main([*base, "--flair", str(tmp_path / "absent.nii.gz")])
    assert_clean_failure(code, capsys.readouterr().err, "absent.nii.gz", out)


def test_brain_extraction_on_a_synthetic_skull(real_case_dir: Path) -> None:
    """BraTS2021_00006 (its brain = the non-zero voxels) with a CSF gap, skull and scalp drawn around it,
    every third slice kept (3 mm apart, like a clinical scan, and three times faster)."""
    case = read_brats_folder(real_case_dir)
    spacing = (case.spacing[0] * 3, case.spacing[1], case.spacing[2])
    truth = np.any(case.image[:, ::3] != 0, axis=0)
    head = add_skull(case.image[0, ::3], truth, spacing)
    mask = extract_brain(head, spacing)
    assert dice(mask, truth) > 0.95
    assert (mask & ~truth).sum() / mask.sum() < 0.03, "scalp kept"


def test_network_brain_extraction_on_a_synthetic_skull_from_t1_alone(real_case_dir: Path) -> None:
    """The default extractor (deepbet, installed from requirements.txt) on the T1 of the same head: the
    contrast where the classical recipe fails on BRAINIX. Every third slice, 3 mm apart."""
    from medvision.data.brain_extraction import NETWORK_METHOD, extract_case_brain, network_available

    assert network_available(), "deepbet is a requirement: pip install -r requirements.txt"
    case = read_brats_folder(real_case_dir)
    truth = np.any(case.image[:, ::3] != 0, axis=0)
    spacing = (case.spacing[0] * 3, case.spacing[1], case.spacing[2])
    t1 = add_skull(case.image[1, ::3], truth, spacing)
    image = np.zeros((4, *t1.shape), dtype=np.float32)
    image[1] = t1
    affine = case.affine @ np.diag([1.0, 1.0, 3.0, 1.0])  # NIfTI k is the case's first axis
    head = dataclasses.replace(
        case, image=image, affine=affine, spacing=spacing, label=None, available=("t1",)
    )
    brain = extract_case_brain(head)
    assert brain.method == NETWORK_METHOD and brain.channel == "t1"
    assert dice(brain.mask, truth) > 0.93
    assert (brain.mask & ~truth).sum() / brain.mask.sum() < 0.06, "scalp kept"
    with pytest.raises(ValueError, match="unknown brain extraction method"):
        extract_case_brain(head, method="bet")


def test_skull_stripped_cases_are_left_alone(real_case_dir: Path) -> None:
    prepared = load_input(_namespace(input=real_case_dir))
    case = prepared.case
    slab = dataclasses.replace(case, image=case.image[:, 60:72].copy(), label=None)
    prepared = dataclasses.replace(prepared, case=slab, export_case=slab)  # 12 slices: fast
    same, line = strip_skull(prepared, "auto")
    assert line is None and same is prepared
    forced, line = strip_skull(prepared, "on")
    assert line is not None and "brain extracted (deepbet network" in line and "cm^3" in line
    _, line = strip_skull(prepared, "on", "classical")  # predict --brain-extractor classical
    assert line is not None and "brain extracted (Otsu threshold" in line
    with pytest.raises(ValueError, match="does not match"):
        apply_brain_mask(prepared.case, np.ones((2, 2, 2), bool))


def test_volumes_are_measured_on_the_scans_own_grid(
    odd_files: dict[str, Path], any_subset_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A prediction of edema over the whole brain on the model grid: its volume, in cm^3 of the FLAIR
    file's own voxels, is the FLAIR brain's volume (not the model grid's voxel count)."""
    from medvision.inference import Predictor
    from medvision.inference.predictor import VolumePrediction

    def everywhere(self, case, **_options):
        label = np.where(case.image[0] != 0, 2, 0).astype(np.uint8)
        probabilities = np.stack([label > 0, np.zeros_like(label), np.zeros_like(label)]).astype(np.float32)
        return VolumePrediction(probabilities, label, None, None, ("WT", "TC", "ET"))

    monkeypatch.setattr(Predictor, "predict_volume", everywhere)
    out = tmp_path / "seg.nii.gz"
    args = ["predict", *_file_args(odd_files), "-o", str(out), "--checkpoint", str(any_subset_checkpoint)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    flair = nib.load(odd_files["flair"])
    brain_cm3 = (np.asarray(flair.dataobj) != 0).sum() * np.prod(flair.header.get_zooms()[:3]) / 1000
    printed = float(stdout.split("volumes (cm^3): WT ")[1].split(",")[0])
    assert printed == pytest.approx(brain_cm3, rel=0.02)
    written = np.asarray(nib.load(out).dataobj)
    assert dice(written == 2, np.asarray(flair.dataobj) != 0) > 0.98
