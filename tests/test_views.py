"""Slice views: a case resliced along another axis is the same scan in world space, and comes back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medvision.data.case import Case
from medvision.data.store import SliceStore, prepare_store
from medvision.data.views import VIEWS, from_view, reslice_case, to_view, view_order
from medvision.errors import InputDataError


def _case() -> Case:
    rng = np.random.default_rng(3)
    shape = (6, 9, 11)  # D, H, W all different, so a wrong axis cannot pass
    image = np.zeros((4, *shape), np.float32)
    image[:, 1:5, 2:8, 2:10] = rng.uniform(10, 100, (4, 4, 6, 8))
    label = np.zeros(shape, np.uint8)
    label[2:4, 3:6, 4:7] = 2
    label[3, 4, 5] = 4
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [0.0, 0.0, 2.0, -4.0], [1.2, 0.0, 0.0, 7.0], [0, 0, 0, 1.0]])
    spacing = (2.0, 1.2, 1.5)  # along D (k), H (i), W (j), from the affine's column norms
    return Case("A", image, affine, spacing, label)


def _world(case: Case, d: int, h: int, w: int) -> np.ndarray:
    # Case index (D, H, W) = NIfTI voxel (k, i, j); the affine acts on (i, j, k).
    return case.affine @ np.array([h, w, d, 1.0])


@pytest.mark.parametrize("view", VIEWS)
def test_every_voxel_keeps_its_world_position_value_and_label(view: str) -> None:
    case = _case()
    resliced = reslice_case(case, view)
    order = view_order(view)
    assert resliced.image.shape[1:] == tuple(case.image.shape[1 + a] for a in order)
    assert resliced.spacing == tuple(case.spacing[a] for a in order)
    for index in np.ndindex(*case.image.shape[1:]):
        new = tuple(index[a] for a in order)
        np.testing.assert_allclose(_world(resliced, *new), _world(case, *index))
        assert resliced.label[new] == case.label[index]
        np.testing.assert_array_equal(resliced.image[(slice(None), *new)], case.image[(slice(None), *index)])
    # The spacing still matches the affine's column norms in the case convention (D = k, H = i, W = j).
    norms = np.linalg.norm(resliced.affine[:3, :3], axis=0)
    np.testing.assert_allclose((norms[2], norms[0], norms[1]), resliced.spacing)


@pytest.mark.parametrize("view", VIEWS)
def test_from_view_undoes_to_view_with_leading_axes(view: str) -> None:
    probabilities = np.random.default_rng(0).random((3, 6, 9, 11))
    viewed = to_view(probabilities, view)
    assert viewed.shape[0] == 3 and viewed.shape[1] == (6, 9, 11)[view_order(view)[0]]
    np.testing.assert_array_equal(from_view(viewed, view), probabilities)


def test_the_slice_axis_of_each_view():
    # Axial slices along D; coronal along W (A-P on the model grid); sagittal along H (L-R).
    assert [view_order(v)[0] for v in VIEWS] == [0, 2, 1]
    with pytest.raises(ValueError, match="view must be one of"):
        view_order("oblique")


def test_a_store_of_another_view_holds_the_resliced_cases(tmp_path: Path) -> None:
    case = _case()
    axial = prepare_store([case], tmp_path / "a.h5", workers=1, progress=False)
    coronal = prepare_store([case], tmp_path / "c.h5", workers=1, progress=False, view="coronal")
    with SliceStore(axial) as a, SliceStore(coronal) as c:
        assert a.view == "axial" and c.view == "coronal"
        # The brain crop and z-score do not depend on the axis order: the same voxels, turned.
        np.testing.assert_array_equal(to_view(a.read_image("A"), "coronal"), c.read_image("A"))
        np.testing.assert_array_equal(to_view(a.read_label("A"), "coronal"), c.read_label("A"))
        table = c.slice_table()
        assert len(table) == c.read_image("A").shape[1]
        assert table["pixels_wt"].sum() == (case.label > 0).sum()


def test_a_store_with_an_unknown_view_is_refused(tmp_path: Path) -> None:
    import h5py

    path = prepare_store([_case()], tmp_path / "s.h5", workers=1, progress=False)
    with h5py.File(path, "a") as f:
        f.attrs["view"] = "oblique"
    with pytest.raises(InputDataError, match="oblique"):
        SliceStore(path)
