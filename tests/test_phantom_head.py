"""Head phantoms: a known brain inside skull, scalp, fat, eyes and a neck (for brain extraction)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medvision.data.case import MODALITIES
from medvision.data.phantom_head import make_head_phantom
from medvision.data.skull import check_skull_stripped
from medvision.data.synthetic import make_phantom

SEED = 5
FLAIR, T1, T2 = (MODALITIES.index(m) for m in ("flair", "t1", "t2"))


@pytest.fixture(scope="module")
def head():
    return make_head_phantom(SEED)


def test_the_same_seed_draws_the_same_head(head):
    again = make_head_phantom(SEED)
    np.testing.assert_array_equal(again.case.image, head.case.image)
    np.testing.assert_array_equal(again.brain, head.brain)


def test_the_true_brain_is_the_stripped_phantom_at_the_same_place_in_the_world(head):
    stripped = make_phantom(f"Head_{SEED:03d}", SEED, (78, 120, 120))
    brain = stripped.image.max(axis=0) > 0
    pad = head.brain.shape[0] - brain.shape[0]
    assert pad >= 0 and head.case.image.shape[2:] == stripped.image.shape[2:]
    np.testing.assert_array_equal(head.brain[pad:], brain)
    assert not head.brain[:pad].any()
    # The same voxel of the brain has the same world position in both (the affine moved with the padding).
    d, h, w = np.argwhere(brain)[0]
    world = stripped.affine @ np.array([h, w, d, 1.0])
    np.testing.assert_allclose(head.case.affine @ np.array([h, w, d + pad, 1.0]), world)


def test_skull_and_scalp_surround_the_brain_and_the_background_is_noise(head):
    image, brain = head.case.image, head.brain
    distance = ndimage.distance_transform_edt(~brain, sampling=head.case.spacing)
    shell = (distance > 3) & (distance < 12)
    far = distance > 40
    brain_t1 = float(np.median(image[T1][brain]))
    assert np.median(image[T1][shell]) > 5 * np.median(image[T1][far])  # tissue, not air
    assert np.percentile(image[T1][shell], 95) > 1.2 * brain_t1  # fat is brighter than brain on T1
    assert np.percentile(image[T1][shell], 5) < 0.2 * brain_t1  # and bone darker
    assert (image[:, far] > 0).mean() > 0.99  # Rician noise: the background is not 0 as in BraTS
    assert not check_skull_stripped(head.case).skull_stripped


def test_eyes_sit_in_front_of_the_brain_bright_on_t2_and_dark_on_flair(head):
    image, brain = head.case.image, head.brain
    front = int(np.argwhere(brain)[:, 2].min())  # W grows toward posterior
    ahead = np.zeros_like(brain)
    ahead[:, :, :front] = True
    vitreous = ahead & (image[T2] > 1.4 * np.median(image[T2][brain]))
    vitreous &= image[FLAIR] < 0.35 * np.median(image[FLAIR][brain])
    labels, count = ndimage.label(ndimage.binary_opening(vitreous))
    sizes = np.bincount(labels.ravel())[1:]
    two_largest = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2]]
    assert count >= 2 and sizes[two_largest[1] - 1] > 50  # two globes of tens of voxels at 2 mm
    (_, left_h, _), (_, right_h, _) = ndimage.center_of_mass(vitreous, labels, two_largest)
    assert abs(left_h - right_h) * head.case.spacing[1] > 40  # one on each side of the midline
