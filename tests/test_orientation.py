"""Views are drawn from the affine: the real frontal tumour lands where a radiologist expects it.

BraTS2021_00006 is stored LPS (voxel j grows toward posterior) and its tumour is frontal (j ~ 75 of
240), a little to the patient's left and a little above the brain's centre. Each view of the real case,
and of copies written in other orientations (RAS, and a permuted ASL grid), must show it on the side
its world position says, and the copies must draw exactly the same pixels as the original.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvision.app_support import figures, mesh, render, viewer
from medvision.app_support.orientation import DisplayFrame
from medvision.data.case import CASE_AXIS_TO_VOXEL
from medvision.data.readers import read_brats_folder
from medvision.export import save_prediction_nifti

CASE_ID = "BraTS2021_00006"
FILES = ("flair", "t1", "t1ce", "t2", "seg")
# Orientations of the copies (nibabel axis codes of voxel axes i, j, k).
COPIES = (("R", "A", "S"), ("A", "S", "L"))
# Edge letter -> (world axis, sign of the RAS+ coordinate toward it).
_TOWARD = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def _reoriented_copy(source: Path, folder: Path, codes: tuple[str, str, str]) -> Path:
    """The case's files rewritten in another voxel order with the affine that keeps every voxel's world
    position (uncompressed, and FLAIR stands in for the other modalities: only geometry is tested)."""
    folder.mkdir()
    for name in FILES:
        image = nib.load(source / f"{CASE_ID}_{'seg' if name == 'seg' else 'flair'}.nii.gz")
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(codes)
        )
        data = nib.orientations.apply_orientation(np.asarray(image.dataobj), transform)
        affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
        nib.save(nib.Nifti1Image(data, affine), folder / f"{CASE_ID}_{name}.nii")
    return folder


@pytest.fixture(scope="module")
def cases(real_case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("orientation")
    found = {"LPS": read_brats_folder(real_case_dir)}
    for codes in COPIES:
        folder = _reoriented_copy(real_case_dir, root / "".join(codes), codes)
        found["".join(codes)] = read_brats_folder(folder, roots=[root])
    return found


def _world_centroid(case, mask: np.ndarray) -> np.ndarray:
    """World (RAS+ mm) centre of a (D, H, W) mask, through the affine alone."""
    return mesh.to_world(np.argwhere(mask).mean(axis=0, keepdims=True), case.affine)[0]


def _in_slice(mask: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The mask with everything off but one slice along a case axis."""
    kept = np.zeros_like(mask)
    where = [slice(None)] * 3
    where[axis] = index
    kept[tuple(where)] = mask[tuple(where)]
    return kept


def _slice_through(case, frame: DisplayFrame, view: str, world: np.ndarray) -> int:
    """The slice index of ``view`` that passes through a world point."""
    voxel = np.linalg.inv(case.affine) @ np.append(world, 1.0)
    case_voxel = voxel[list(CASE_AXIS_TO_VOXEL)]  # (i, j, k) -> case axes (k, i, j)
    return int(round(case_voxel[frame.slice_axis(view)]))


def _centre(plane: np.ndarray) -> np.ndarray:
    return np.argwhere(plane).mean(axis=0)  # (row, column)


def test_axis_codes_come_from_the_affine(cases):
    assert viewer.display_frame(cases["LPS"]).axis_codes() == "SLP"
    assert viewer.display_frame(cases["RAS"]).axis_codes() == "SRA"
    assert viewer.display_frame(cases["ASL"]).axis_codes() == "LAS"
    frame = viewer.display_frame(cases["ASL"])
    assert [frame.slice_axis(v) for v in render.VIEWS] == [2, 1, 0]
    assert not viewer.can_show_single_slices(frame) and viewer.can_show_single_slices(
        viewer.display_frame(cases["LPS"])
    )


def test_edge_labels_state_the_convention():
    frame = DisplayFrame.from_affine(np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert frame.edge_labels("axial") == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert frame.edge_labels("coronal") == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert frame.edge_labels("sagittal") == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    neuro = DisplayFrame.from_affine(np.eye(4), "neurological")
    assert neuro.edge_labels("axial") == {"top": "A", "bottom": "P", "left": "L", "right": "R"}
    with pytest.raises(ValueError, match="convention"):
        DisplayFrame.from_affine(np.eye(4), "upside-down")
    with pytest.raises(ValueError, match="singular"):
        DisplayFrame.from_affine(np.zeros((4, 4)))
    fig = figures.slice_figure(np.zeros((4, 5, 3), np.uint8), edges=frame.edge_labels("axial"))
    assert sorted(a.text for a in fig.layout.annotations) == ["<b>A</b>", "<b>L</b>", "<b>P</b>", "<b>R</b>"]


@pytest.mark.parametrize("copy", ["LPS", "RAS", "ASL"])
def test_frontal_tumour_is_drawn_on_its_side_in_every_view(cases, copy):
    case = cases[copy]
    frame = viewer.display_frame(case)
    tumour, brain = case.label > 0, case.image[0] > 0
    through = _world_centroid(case, tumour)
    assert (through - _world_centroid(case, brain))[1] > 30.0, "the tumour of BraTS2021_00006 is frontal"
    for view in render.VIEWS:
        index = _slice_through(case, frame, view, through)
        axis = frame.slice_axis(view)
        # Where the tumour sits against the brain in this plane, in world mm toward R, A, S.
        offset = _world_centroid(case, _in_slice(tumour, axis, index)) - _world_centroid(
            case, _in_slice(brain, axis, index)
        )
        t_row, t_col = _centre(render.take_slice(tumour, view, index, frame))
        b_row, b_col = _centre(render.take_slice(brain, view, index, frame))
        edges = frame.edge_labels(view)
        # Whatever the plane, a tumour offset toward the letter on an edge must be drawn toward that edge.
        for near, tumour_at, brain_at in ((edges["top"], t_row, b_row), (edges["left"], t_col, b_col)):
            toward_near = _TOWARD[near][1] * offset[_TOWARD[near][0]]
            if abs(toward_near) > 5.0:  # mm: only offsets clear of the brain's own asymmetry
                assert (tumour_at < brain_at) == (toward_near > 0), (copy, view, near, tumour_at, brain_at)
    axial = render.take_slice(tumour, "axial", _slice_through(case, frame, "axial", through), frame)
    rows = np.argwhere(
        render.take_slice(brain, "axial", _slice_through(case, frame, "axial", through), frame)
    )
    assert _centre(axial)[0] < rows[:, 0].min() + 0.4 * np.ptp(rows[:, 0]), (
        "tumour in the top of the axial view"
    )


def test_every_orientation_draws_the_same_pixels(cases):
    reference = cases["LPS"]
    through = _world_centroid(reference, reference.label > 0)
    for copy in ("RAS", "ASL"):
        case = cases[copy]
        for convention in ("radiological", "neurological"):
            for view in render.VIEWS:
                planes = []
                for c in (reference, case):
                    frame = viewer.display_frame(c, convention)
                    planes.append(
                        render.take_slice(c.label, view, _slice_through(c, frame, view, through), frame)
                    )
                assert np.array_equal(*planes), (copy, convention, view)
                frames = [viewer.display_frame(c, convention) for c in (reference, case)]
                assert frames[0].edge_labels(view) == frames[1].edge_labels(view)
                spacings = [
                    f.pixel_spacing(c.spacing, view) for f, c in zip(frames, (reference, case), strict=True)
                ]
                assert spacings[0] == spacings[1]


def test_neurological_mirrors_left_and_right_only(cases):
    case = cases["LPS"]
    radio, neuro = viewer.display_frame(case), viewer.display_frame(case, "neurological")
    for view in ("axial", "coronal"):
        assert np.array_equal(render.take_slice(case.label, view, 80, radio)[:, ::-1],
                              render.take_slice(case.label, view, 80, neuro))  # fmt: skip
    assert np.array_equal(render.take_slice(case.label, "sagittal", 120, radio),
                          render.take_slice(case.label, "sagittal", 120, neuro))  # fmt: skip


def test_export_stays_in_each_scans_own_grid(cases, real_case_dir, tmp_path):
    """The label written for a case (the predict export) lies voxel for voxel on the scan it came from."""
    for copy, case in cases.items():
        written = nib.load(save_prediction_nifti(case.label, case, tmp_path / f"{copy}.nii.gz"))
        source = nib.load(case.source_paths[-1])  # its seg file
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))
        assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
