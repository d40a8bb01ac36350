"""Inference engine: geometry, label/probability agreement, slice vs volume, TTA, MC dropout, caching,
attention maps, single-output checkpoints, volumetry, NIfTI export and the background job."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvision.checkpoint import save_checkpoint
from medvision.data.case import Case, case_to_nifti_axes, label_to_regions
from medvision.errors import CheckpointError, InputDataError
from medvision.export import save_prediction_nifti, save_probabilities_nifti, save_uncertainty_nifti
from medvision.inference import Predictor, case_content_hash, probabilities_to_label
from medvision.models import AttentionUNet
from medvision.prediction_cache import ByteLRU
from medvision.volume_job import VolumeJob
from medvision.volumetry import remove_small_components, volumetry, volumetry_csv

REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021_00006"
SHAPE = (12, 36, 44)  # (D, H, W) of the synthetic case
BRAIN_SLICES = range(2, 10)  # slices 0, 1, 10, 11 hold no brain
EMPTY_INSIDE = 6  # an interior slice without brain (output must be 0 there too)


def make_case(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Case:
    """A small 4-modality case: an off-centre ellipsoid 'brain' with a brighter blob, zero outside."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    k, i, j = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    brain = ((i - 15) / 12.0) ** 2 + ((j - 24) / 16.0) ** 2 < 1.0
    brain &= (k >= BRAIN_SLICES.start) & (k < BRAIN_SLICES.stop) & (k != EMPTY_INSIDE)
    blob = ((k - 5) / 2.0) ** 2 + ((i - 15) / 4.0) ** 2 + ((j - 26) / 5.0) ** 2 < 1.0
    image = np.zeros((4, d, h, w), dtype=np.float32)
    for c in range(4):
        values = 200 + 50 * c + 30 * rng.standard_normal(shape) + 300 * blob
        image[c] = np.where(brain, np.round(values), 0).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 90], [0, -1.2, 0, 120], [0, 0, 2.0, -60], [0, 0, 0, 1]])
    return Case("Synth_test", image, affine, (2.0, 1.0, 1.2), label=None)


def save_tiny(
    path: Path,
    *,
    out_channels: int = 3,
    target: str = "regions",
    neighbours: int = 0,
    attention: bool = True,
    seed: int = 0,
    meta: dict | None = None,
    availability: bool = False,
) -> Path:
    torch.manual_seed(seed)
    planes = 4 if availability else 0  # a model for any modality subset takes 4 availability planes too
    model = AttentionUNet(4 * (1 + 2 * neighbours) + planes, out_channels, 4, 2, 0.2, attention)
    # Untrained BatchNorm statistics would make every probability ~0.5; spread them so the label is mixed.
    with torch.no_grad():
        model.head.bias.fill_(0.0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.fill_(0.05)
    checkpoint = path / f"tiny_{target}_{neighbours}.safetensors"
    extra = {**({"modality_input": "availability"} if availability else {}), **(meta or {})}
    save_checkpoint(
        checkpoint, model, {"target": target, "neighbours": neighbours, "patch_size": [32, 48], **extra}
    )
    return checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    # float32 so slice-vs-volume and determinism checks can be tight; bf16 is checked separately.
    return Predictor(checkpoint, device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


def test_volume_geometry_and_zero_outside_brain(predictor: Predictor, case: Case) -> None:
    result = predictor.predict_volume(case)
    assert result.probabilities.shape == (3, *SHAPE) and result.probabilities.dtype == np.float32
    assert result.label.shape == SHAPE and result.label.dtype == np.uint8
    assert set(np.unique(result.label)) <= {0, 1, 2, 4}
    assert result.regions == ("WT", "TC", "ET")
    assert result.uncertainty is None and result.uncertainty_score is None
    brain_slices = [k for k in BRAIN_SLICES if k != EMPTY_INSIDE]
    assert result.probabilities[:, brain_slices].max() > 0.0
    for k in (0, 1, EMPTY_INSIDE, 10, 11):
        assert not result.probabilities[:, k].any() and not result.label[k].any()
    # Columns/rows outside the brain's bounding box are 0 as well (the crop was undone, not stretched).
    assert not result.probabilities[:, :, :, :8].any()
    assert not result.probabilities.flags.writeable


def test_label_agrees_with_probabilities(predictor: Predictor, case: Case) -> None:
    result = predictor.predict_volume(case)
    wt, tc, et = (result.probabilities[i] > 0.5 for i in range(3))
    assert 0 < wt.sum() < wt.size  # the fixture model gives a mixed prediction, so this checks something
    np.testing.assert_array_equal(result.label > 0, wt)
    np.testing.assert_array_equal(np.isin(result.label, (1, 4)), wt & tc)
    np.testing.assert_array_equal(result.label == 4, wt & tc & et)
    np.testing.assert_array_equal(label_to_regions(result.label)[0], wt)


def test_probabilities_to_label_nesting_and_single_regions() -> None:
    probs = np.array([[0.9, 0.9, 0.9, 0.2, 0.9], [0.1, 0.8, 0.8, 0.9, 0.7], [0.1, 0.2, 0.7, 0.9, 0.1]])
    np.testing.assert_array_equal(probabilities_to_label(probs, ("WT", "TC", "ET")), [2, 1, 4, 0, 1])
    np.testing.assert_array_equal(probabilities_to_label(probs[:1], ("WT",)), [2, 2, 2, 0, 2])
    np.testing.assert_array_equal(probabilities_to_label(probs[1:2], ("NCR",)), [0, 1, 1, 1, 1])


def test_predict_slice_matches_volume(checkpoint: Path, case: Case) -> None:
    fresh = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch")
    slices = [fresh.predict_slice(case, k) for k in range(SHAPE[0])]  # before the volume is cached
    volume = fresh.predict_volume(case)
    for k, one in enumerate(slices):
        assert one.probabilities.shape == (3, SHAPE[1], SHAPE[2]) and one.slice_index == k
        np.testing.assert_allclose(one.probabilities, volume.probabilities[:, k], atol=1e-5)
    # With a volume cached, slices come from it.
    np.testing.assert_array_equal(fresh.predict_slice(case, 5).label, volume.label[5])
    with pytest.raises(ValueError, match="out of range"):
        fresh.predict_slice(case, SHAPE[0])


def test_bf16_autocast_agrees_with_float32(checkpoint: Path, case: Case) -> None:
    fp32 = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch").predict_volume(case)
    bf16_predictor = Predictor(checkpoint, device="cpu", dtype="bfloat16", backend="torch")
    if bf16_predictor.precision != "bfloat16":
        pytest.skip("bf16 autocast not usable on this CPU")
    bf16 = bf16_predictor.predict_volume(case)
    # This untrained model is deliberately steep (saturated probabilities), so a few voxels near 0.5 move
    # more; on average and in the label bf16 must agree closely.
    brain = case.image[0] != 0
    assert np.abs(bf16.probabilities - fp32.probabilities)[:, brain].mean() < 0.01
    assert (bf16.label != fp32.label).mean() < 0.01


def test_tta_shapes_and_determinism(predictor: Predictor, case: Case) -> None:
    plain = predictor.predict_volume(case)
    tta = predictor.predict_volume(case, tta=True)
    assert tta.probabilities.shape == plain.probabilities.shape
    assert not np.allclose(tta.probabilities, plain.probabilities)  # flips average differently
    predictor.clear_cache()
    again = predictor.predict_volume(case, tta=True)
    np.testing.assert_allclose(again.probabilities, tta.probabilities, atol=1e-6)


def test_mc_dropout_uncertainty_is_seeded(predictor: Predictor, case: Case) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = predictor.predict_volume(case, mc_samples=3, seed=7)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    assert first.uncertainty is not None and first.uncertainty.shape == SHAPE
    assert first.uncertainty.dtype == np.float32
    assert first.uncertainty.min() >= 0.0 and first.uncertainty.max() <= 0.5
    assert first.uncertainty.max() > 0.0
    assert isinstance(first.uncertainty_score, float) and first.uncertainty_score > 0.0
    predictor.clear_cache()
    second = predictor.predict_volume(case, mc_samples=3, seed=7)
    np.testing.assert_array_equal(second.uncertainty, first.uncertainty)
    np.testing.assert_array_equal(second.probabilities, first.probabilities)
    other = predictor.predict_volume(case, mc_samples=3, seed=8)
    assert not np.array_equal(other.uncertainty, first.uncertainty)
    # The score is the mean uncertainty over the predicted tumour.
    tumour = first.label > 0
    assert first.uncertainty_score == pytest.approx(float(first.uncertainty[tumour].mean()))
    with pytest.raises(ValueError):
        predictor.predict_volume(case, mc_samples=1)
    # Dropout layers are back in eval mode afterwards.
    assert not any(m.training for m in predictor.model.modules())


def test_mc_passes_stacked_in_one_forward_match_one_pass_per_forward(
    predictor: Predictor, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvision.inference import forward

    # One pass per forward (two seeds: how far two 8-pass estimates lie apart), then all 8 passes of a
    # batch stacked into one forward.
    monkeypatch.setattr(forward, "MC_SLICES_PER_FORWARD", 1)
    apart = predictor.predict_volume(case, mc_samples=8, seed=3)
    apart_again = predictor.predict_volume(case, mc_samples=8, seed=4)
    predictor.clear_cache()
    monkeypatch.setattr(forward, "MC_SLICES_PER_FORWARD", 10_000)
    stacked = predictor.predict_volume(case, mc_samples=8, seed=3)
    # Every stacked copy of a slice drew its own dropout masks (a shared mask would give no spread), and
    # the stacked estimate is as close to the one-pass-per-forward one as two seeds of that are.
    brain = case.image.any(axis=0)

    def distance(a, b) -> float:
        return float(np.abs(a.probabilities - b.probabilities)[:, brain].mean())

    assert stacked.uncertainty.max() > 0.0
    assert not np.array_equal(stacked.uncertainty, apart.uncertainty)
    assert distance(stacked, apart) < 1.5 * distance(apart_again, apart) + 1e-3


def test_focus_slices_widen_hot_slices_by_the_margin() -> None:
    from medvision.inference.forward import MC_FOCUS_MARGIN, focus_slices

    first = np.zeros((20, 3, 3), dtype=np.float32)
    first[10, 1, 1] = 0.3
    first[3, 0, 0] = 0.01  # below the bar
    indices = np.arange(2, 18)
    expected = np.arange(10 - MC_FOCUS_MARGIN, 10 + MC_FOCUS_MARGIN + 1)
    np.testing.assert_array_equal(focus_slices(first, indices, 0.05), expected)
    some = np.array([8, 10, 13, 15])  # only the slices that are run count
    near = [k for k in some if abs(k - 10) <= MC_FOCUS_MARGIN]
    np.testing.assert_array_equal(focus_slices(first, some, 0.05), near)
    assert focus_slices(first, indices, 0.5).size == 0


def test_focused_mc_dropout_runs_passes_only_near_tumour_probability(
    checkpoint: Path, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvision.inference import forward
    from medvision.inference.forward import focus_slices

    fresh = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch", batch_size=2)
    full = fresh.predict_volume(case, mc_samples=3, seed=5)
    # A bar every brain voxel clears: the same passes on the same slices as without focus.
    everywhere = fresh.predict_volume(case, mc_samples=3, seed=5, mc_focus=1e-9)
    np.testing.assert_array_equal(everywhere.uncertainty, full.uncertainty)
    np.testing.assert_allclose(everywhere.probabilities, full.probabilities, atol=1e-6)
    plain = fresh.predict_volume(case)
    # A bar in between: spread only on the focused slices, the plain probabilities elsewhere.
    # No margin, so that this small case's 7 brain slices are not all within reach of one hot slice.
    monkeypatch.setattr(forward, "MC_FOCUS_MARGIN", 0)
    brain_slices = np.array([k for k in BRAIN_SLICES if k != EMPTY_INSIDE])
    peaks = np.unique(plain.probabilities[0].max(axis=(1, 2))[brain_slices])
    bar = float(peaks[-2:].mean())  # between the two highest slice peaks
    focused = focus_slices(plain.probabilities[0], brain_slices, bar)
    assert 0 < len(focused) < len(brain_slices), "the bar should split the slices for this check"
    # The cached plain volume is reused: no plain forward runs again.
    calls: list[bool] = []
    real = fresh.engine.backend.probabilities
    monkeypatch.setattr(
        fresh.engine.backend,
        "probabilities",
        lambda batch, tta=False, stochastic=False: (
            calls.append(stochastic) or real(batch, tta=tta, stochastic=stochastic)
        ),
    )
    seen: list[float] = []
    some = fresh.predict_volume(case, mc_samples=3, seed=5, mc_focus=bar, progress=seen.append)
    assert calls and all(calls), "only dropout passes should run with a cached plain volume"
    assert seen == sorted(seen) and seen[-1] == 1.0
    outside = np.setdiff1d(np.arange(SHAPE[0]), focused)
    assert not some.uncertainty[outside].any() and some.uncertainty[focused].max() > 0.0
    np.testing.assert_array_equal(some.probabilities[:, outside], plain.probabilities[:, outside])
    assert some.options["mc_focus"] == bar
    with pytest.raises(ValueError, match="mc_focus"):
        fresh.engine.predict(fresh.prepare(case), mc_focus=0.1)


def test_focus_window_holds_the_hot_voxels_with_context_and_the_patch_size() -> None:
    from medvision.inference.forward import focus_window
    from medvision.inference.geometry import PreparedVolume

    d, h, w = 3, 60, 88
    prepared = PreparedVolume(
        image=np.zeros((4, d, h, w), np.float32),
        box=(slice(0, d), slice(0, h), slice(0, w)),
        full_shape=(d, h, w),
        brain=np.ones((d, h, w), bool),
        padded=(64, 96),
        offset=(2, 4),
    )
    hot = np.zeros((d, h, w), bool)
    assert focus_window(hot, prepared, 16, (32, 32), context=8) is None  # nothing hot
    hot[1, 10, 20] = True
    rows, cols = focus_window(hot, prepared, 16, (32, 32), context=8)
    # 1 voxel + 8 on each side is 17: the patch's 32, centred on it and shifted inside the input.
    assert (rows.start, rows.stop) == (0, 32) and (cols.start, cols.stop) == (8, 40)
    assert rows.start <= 10 + 2 < rows.stop and cols.start <= 20 + 4 < cols.stop
    hot[2, 50, 80] = True  # a second spot: the window grows to hold both, in multiples of 16
    rows, cols = focus_window(hot, prepared, 16, None, context=0)
    assert rows.start <= 12 and rows.stop > 52 and cols.start <= 24 and cols.stop > 84
    assert (rows.stop - rows.start) % 16 == 0 and (cols.stop - cols.start) % 16 == 0
    assert focus_window(np.ones((d, h, w), bool), prepared, 16, None, context=8) is None  # all of it


def test_focused_mc_dropout_sees_only_a_window_around_the_tumour(
    checkpoint: Path, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from medvision.inference import forward

    fresh = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch", batch_size=2)
    fresh.engine.spec = replace(fresh.engine.spec, patch_size=None)
    monkeypatch.setattr(forward, "MC_FOCUS_CONTEXT", 0)
    plain = fresh.predict_volume(case)
    first = plain.probabilities[0]
    bar = float(np.quantile(first[first > 0], 0.98))  # a few hot voxels only
    hot = first >= bar
    _, rows, cols = np.nonzero(hot)
    padded = fresh.prepare(case).padded
    shapes: list[tuple[int, int]] = []
    real = fresh.engine.backend.probabilities
    monkeypatch.setattr(
        fresh.engine.backend,
        "probabilities",
        lambda batch, tta=False, stochastic=False: (
            shapes.append(batch.shape[-2:]) or real(batch, tta=tta, stochastic=stochastic)
        ),
    )
    some = fresh.predict_volume(case, mc_samples=3, seed=5, mc_focus=bar)
    assert shapes and all(s[0] <= padded[0] and s[1] <= padded[1] for s in shapes)
    assert any(s != padded for s in shapes), (shapes, padded)
    # Spread only inside the window (the hot voxels' box, rounded up to the network's multiple), the plain
    # probabilities outside it.
    reach = fresh.engine.spec.multiple
    near = np.zeros(first.shape[1:], bool)
    near[rows.min() - reach : rows.max() + reach + 1, cols.min() - reach : cols.max() + reach + 1] = True
    assert some.uncertainty.max() > 0.0 and not some.uncertainty[:, ~near].any()
    np.testing.assert_array_equal(some.probabilities[:, :, ~near], plain.probabilities[:, :, ~near])


def test_results_are_cached_by_content_and_options(predictor: Predictor, case: Case) -> None:
    first = predictor.predict_volume(case)
    copy = Case(case.case_id + "_copy", case.image.copy(), case.affine.copy(), case.spacing)
    assert predictor.predict_volume(copy) is first
    assert predictor.predict_volume(case, tta=True) is not first
    calls: list[float] = []
    assert predictor.predict_volume(case, progress=calls.append) is first
    assert calls == [1.0]


def test_the_models_recorded_clean_up_applies_unless_turned_off(tmp_path: Path, case: Case) -> None:
    from skimage import measure

    recorded = save_tiny(tmp_path, meta={"postprocess": {"min_component_fraction": 1.0}})
    predictor = Predictor(recorded, device="cpu", dtype="float32", backend="torch")
    assert predictor.engine.spec.min_component_fraction == 1.0
    kept_all = predictor.predict_volume(case, min_component_fraction=0.0)
    pieces = measure.label(kept_all.label > 0, connectivity=3).max()
    assert pieces >= 2, "the untrained model should scatter several pieces for this check to mean anything"
    assert np.array_equal(kept_all.label, probabilities_to_label(kept_all.probabilities, predictor.regions))
    default = predictor.predict_volume(case)
    assert measure.label(default.label > 0, connectivity=3).max() == 1  # the largest piece only
    assert default.options["min_component_fraction"] == 1.0
    assert np.array_equal(default.probabilities, kept_all.probabilities)  # clean-up touches the label only
    assert ((default.label > 0) <= (kept_all.label > 0)).all()
    with pytest.raises(ValueError, match="min_component_fraction"):
        predictor.predict_volume(case, min_component_fraction=1.5)
    bad = save_tiny(tmp_path / "bad", meta={"postprocess": {"min_component_fraction": "most"}})
    with pytest.raises(CheckpointError, match="min_component_fraction"):
        Predictor(bad, device="cpu", dtype="float32", backend="torch")


def test_progress_is_reported_and_can_abort(checkpoint: Path, case: Case) -> None:
    fresh = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch", batch_size=2)
    seen: list[float] = []
    fresh.predict_volume(case, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 4  # 7 brain slices in batches of 2

    def stop(fraction: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fresh.predict_volume(case, tta=True, progress=stop)


def test_predict_slice_runs_between_volume_batches(checkpoint: Path, case: Case) -> None:
    pred = Predictor(checkpoint, device="cpu", dtype="float32", batch_size=1)
    paused, release = threading.Event(), threading.Event()
    results: dict = {}

    def progress(fraction: float) -> None:
        if not release.is_set():
            paused.set()
            release.wait(30)  # the volume stops after its first batch until the slice is done

    worker = threading.Thread(target=lambda: results.update(v=pred.predict_volume(case, progress=progress)))
    worker.start()
    assert paused.wait(30)
    start = time.perf_counter()
    one = pred.predict_slice(case, 5)
    assert time.perf_counter() - start < 15  # did not wait for the paused volume
    release.set()
    worker.join(60)
    np.testing.assert_allclose(one.probabilities, results["v"].probabilities[:, 5], atol=1e-5)


def test_case_content_hash() -> None:
    a, b = make_case(0), make_case(0)
    assert case_content_hash(a) == case_content_hash(b) == case_content_hash(a)
    changed = a.image.copy()
    changed[0, 5, 15, 20] += 1.0
    assert case_content_hash(Case(a.case_id, changed, a.affine, a.spacing)) != case_content_hash(a)
    assert case_content_hash(Case(a.case_id, a.image, a.affine * 2, a.spacing)) != case_content_hash(a)


def test_byte_lru_evicts_by_bytes() -> None:
    cache = ByteLRU(max_bytes=2500)
    cache.put("a", np.zeros(1000, dtype=np.uint8))
    cache.put("b", np.zeros(1000, dtype=np.uint8))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", np.zeros(1000, dtype=np.uint8))
    assert "b" not in cache and "a" in cache and "c" in cache and cache.nbytes == 2000
    cache.put("huge", np.zeros(5000, dtype=np.uint8))
    assert "huge" not in cache and len(cache) == 2
    with pytest.raises(ValueError):
        ByteLRU(-1)


def test_attention_map(predictor: Predictor, case: Case) -> None:
    att = predictor.attention_map(case, 5)
    assert att.shape == SHAPE[1:] and att.dtype == np.float32
    assert att.min() >= 0.0 and att.max() <= 1.0 and att.max() > 0.0
    assert not att[:, :8].any()  # outside the brain crop
    assert not predictor.attention_map(case, 0).any()  # no brain on slice 0


def test_attention_map_without_gates(tmp_path: Path, case: Case) -> None:
    ckpt = save_tiny(tmp_path, attention=False)
    with pytest.raises(ValueError, match="attention"):
        Predictor(ckpt, device="cpu", dtype="float32").attention_map(case, 5)


def test_neighbour_checkpoint_stacks_clamped_slices(tmp_path: Path, case: Case) -> None:
    ckpt = save_tiny(tmp_path, neighbours=1)
    pred = Predictor(ckpt, device="cpu", dtype="float32", backend="torch")
    assert pred.neighbours == 1
    prepared = pred.prepare(case)
    batch = pred.engine.batch_input(prepared, np.array([0]))
    assert batch.shape[1] == 12
    np.testing.assert_array_equal(batch[0, 0:4], batch[0, 4:8])  # slice -1 clamps to slice 0
    assert not np.array_equal(batch[0, 8:12], batch[0, 4:8])
    result = pred.predict_volume(case)
    assert result.probabilities.shape == (3, *SHAPE)


@pytest.mark.parametrize(("target", "region", "labels"), [("wt", "WT", {0, 2}), ("necrotic", "NCR", {0, 1})])
def test_single_output_checkpoints(tmp_path: Path, case: Case, target: str, region: str, labels: set) -> None:
    ckpt = save_tiny(tmp_path, out_channels=1, target=target)
    pred = Predictor(ckpt, device="cpu", dtype="float32")
    result = pred.predict_volume(case)
    assert result.regions == (region,) and result.probabilities.shape == (1, *SHAPE)
    assert set(np.unique(result.label)) <= labels
    np.testing.assert_array_equal(result.label > 0, result.probabilities[0] > 0.5)
    assert pred.predict_slice(case, 5).probabilities.shape == (1, *SHAPE[1:])


def test_thread_limit_is_applied_and_restored(checkpoint: Path, case: Case, monkeypatch) -> None:
    pred = Predictor(checkpoint, device="cpu", dtype="float32", threads=1)
    before = torch.get_num_threads()
    seen: list[int] = []
    forward = pred.model.forward

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return forward(*args, **kwargs)

    monkeypatch.setattr(pred.model, "forward", spy)
    pred.predict_volume(case)
    pred.predict_slice(case, 4)
    pred.attention_map(case, 4)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_auto_threads_leave_busy_cores_alone(checkpoint: Path, case: Case, monkeypatch) -> None:
    import medvision.cpu_threads as cpu_threads
    import medvision.inference.backend as backend

    for busy, expected in ((None, 4), (0.2, 4), (1.0, 3), (1.8, 2), (7.5, 1)):
        monkeypatch.setattr(cpu_threads, "_cache", None)
        monkeypatch.setattr(cpu_threads, "busy_cores_elsewhere", lambda busy=busy: busy)
        assert cpu_threads.auto_threads(4) == expected
    sample = cpu_threads._cpu_times()
    if sample is not None:  # Linux: a real reading of /proc/stat
        assert 0 <= sample[0] <= sample[1]

    pred = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch")  # threads="auto"
    monkeypatch.setattr(backend, "auto_threads", lambda max_threads: 1)
    seen: list[int] = []
    forward = pred.model.forward
    monkeypatch.setattr(
        pred.model, "forward", lambda *a, **k: seen.append(torch.get_num_threads()) or forward(*a, **k)
    )
    pred.predict_slice(case, 4)
    assert seen == [1]


def test_a_volume_decides_its_threads_batch_by_batch(checkpoint: Path, case: Case, monkeypatch) -> None:
    # A volume started while other work (the browser drawing the first view) held a core keeps going with
    # more threads once that work ends: auto_threads is asked again for every batch.
    import medvision.inference.backend as backend

    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the most a prediction may use, read when the predictor is made
    try:
        pred = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch", batch_size=2)
        answers = iter([1, 1] + [2] * 100)  # busy for the first two batches, then free
        monkeypatch.setattr(backend, "auto_threads", lambda max_threads: min(next(answers), max_threads))
        seen: list[int] = []
        forward = pred.model.forward
        monkeypatch.setattr(
            pred.model, "forward", lambda *a, **k: seen.append(torch.get_num_threads()) or forward(*a, **k)
        )
        pred.predict_volume(case)
        assert len(seen) >= 3 and seen[:2] == [1, 1] and set(seen[2:]) == {2}, seen
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_pad_to_patch_uses_the_training_patch(checkpoint: Path, case: Case) -> None:
    minimal = Predictor(checkpoint, device="cpu", dtype="float32")
    padded = Predictor(checkpoint, device="cpu", dtype="float32", pad_to_patch=True)
    key = case_content_hash(case)
    assert minimal.prepare(case, key).padded == (24, 32)  # brain crop 23 x 31 rounded up to 4
    assert padded.prepare(case, key).padded == (32, 48)  # the checkpoint's patch_size
    a, b = minimal.predict_volume(case), padded.predict_volume(case)
    assert a.probabilities.shape == b.probabilities.shape
    assert not b.probabilities[:, 0].any()


def test_predictor_options_and_missing_checkpoint(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValueError):
        Predictor(checkpoint, device="tpu")
    with pytest.raises(ValueError):
        Predictor(checkpoint, device="cpu", dtype="int8")
    with pytest.raises(ValueError):
        Predictor(checkpoint, device="cpu", backend="tensorrt")
    with pytest.raises(ValueError):
        Predictor(checkpoint, device="cpu", batch_size=0)
    with pytest.raises(ValueError):
        Predictor(checkpoint, device="cpu", threads=0)
    with pytest.raises(CheckpointError):
        Predictor(tmp_path / "nope.safetensors", device="cpu")
    import medvision.inference.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "DEFAULT_CHECKPOINT", tmp_path / "demo.safetensors")
    with pytest.raises(CheckpointError, match="demo checkpoint is missing"):
        Predictor(device="cpu")


def test_onnx_backend_falls_back_or_agrees(checkpoint: Path, case: Case, tmp_path: Path, caplog) -> None:
    reference = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch").predict_volume(case)
    with caplog.at_level(logging.INFO, logger="medvision"):
        pred = Predictor(checkpoint, device="cpu", dtype="float32", backend="onnx", onnx_cache_dir=tmp_path)
    if pred.backend == "torch":  # onnx / onnxruntime missing here: one log line, same results
        assert any("ONNX Runtime path unavailable" in r.getMessage() for r in caplog.records)
    else:
        assert list(tmp_path.glob("*.onnx"))
    result = pred.predict_volume(case, tta=True)
    tta_ref = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch").predict_volume(
        case, tta=True
    )
    np.testing.assert_allclose(result.probabilities, tta_ref.probabilities, atol=1e-4)
    assert reference.probabilities.shape == result.probabilities.shape


def test_remove_small_components() -> None:
    label = np.zeros((6, 10, 10), dtype=np.uint8)
    label[1:4, 1:4, 1:4] = 2  # 27 voxels
    label[2, 2, 2] = 4
    label[5, 8, 8] = 1  # 1 voxel
    cleaned = remove_small_components(label, 5)
    assert cleaned[5, 8, 8] == 0 and cleaned[2, 2, 2] == 4 and (cleaned > 0).sum() == 27
    assert label[5, 8, 8] == 1  # input untouched
    regions = label_to_regions(label)
    cleaned_regions = remove_small_components(regions, 5)
    assert cleaned_regions.dtype == bool and not cleaned_regions[:, 5, 8, 8].any()
    assert not cleaned_regions[2].any()  # the lone ET voxel is a 1-voxel ET component
    np.testing.assert_array_equal(remove_small_components(label, 0), label)


def test_volumetry_hand_computed() -> None:
    label = np.zeros((10, 20, 30), dtype=np.uint8)
    label[3:6, 5:8, 4:14] = 2  # 3 slices of 3x10 edema
    label[4, 6, 5:9] = 1  # 4 necrotic voxels on slice 4
    label[4, 6, 9:11] = 4  # 2 enhancing voxels
    spacing = (2.0, 1.0, 0.5)  # 1 mm^3 voxels
    vol = volumetry(label, spacing)
    assert vol["WT_cm3"] == pytest.approx(90 / 1000)
    assert vol["TC_cm3"] == pytest.approx(6 / 1000)
    assert vol["ET_cm3"] == pytest.approx(2 / 1000)
    assert vol["NCR_NET_cm3"] == pytest.approx(4 / 1000) and vol["ED_cm3"] == pytest.approx(84 / 1000)
    assert (vol["first_slice"], vol["last_slice"]) == (3, 5)
    assert vol["largest_slice"] == 3 and vol["largest_area_mm2"] == pytest.approx(30 * 0.5)
    # 3 rows x 10 columns at (1.0, 0.5) mm: a 3 x 5 mm box; its Feret diameter is about its diagonal.
    assert 5.0 <= vol["max_diameter_mm"] <= np.hypot(3.0, 5.0) + 0.01
    empty = volumetry(np.zeros((4, 5, 5), dtype=np.uint8), (1, 1, 1))
    assert empty["first_slice"] is None and empty["max_diameter_mm"] == 0.0 and empty["WT_cm3"] == 0.0
    assert set(volumetry(label, spacing, regions=("WT",))) >= {"WT_cm3"}
    assert "TC_cm3" not in volumetry(label, spacing, regions=("WT",))
    lines = volumetry_csv(vol, case_id="X").splitlines()
    assert lines[0].split(",")[:3] == ["case_id", "WT_cm3", "TC_cm3"]
    assert lines[1].split(",")[:2] == ["X", "0.090"]
    assert volumetry_csv(empty).splitlines()[1].split(",")[5] == ""  # first_slice None -> empty cell


def test_export_round_trip_synthetic(predictor: Predictor, case: Case, tmp_path: Path) -> None:
    result = predictor.predict_volume(case, mc_samples=2)
    out = save_prediction_nifti(result.label, case, tmp_path / "sub" / "pred.nii.gz")
    loaded = nib.load(out)
    assert loaded.get_data_dtype() == np.uint8
    np.testing.assert_allclose(loaded.affine, case.affine)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), case_to_nifti_axes(result.label))
    probs = nib.load(save_probabilities_nifti(result.probabilities, case, tmp_path / "p.nii.gz"))
    assert probs.shape == (SHAPE[1], SHAPE[2], SHAPE[0], 3) and probs.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(probs.dataobj)[..., 1], case_to_nifti_axes(result.probabilities[1]))
    unc = nib.load(save_uncertainty_nifti(result.uncertainty, case, tmp_path / "u.nii"))
    assert unc.shape == (SHAPE[1], SHAPE[2], SHAPE[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz", "sub", "u.nii"]  # no temp files left
    with pytest.raises(InputDataError, match="must end with"):
        save_prediction_nifti(result.label, case, tmp_path / "pred.png")
    with pytest.raises(ValueError, match="shape"):
        save_prediction_nifti(result.label[1:], case, tmp_path / "bad.nii.gz")


def test_volume_job_runs_in_background(checkpoint: Path, case: Case) -> None:
    pred = Predictor(checkpoint, device="cpu", dtype="float32", batch_size=1)
    job = VolumeJob(pred, case, tta=True).start()
    assert job.wait(timeout=120)
    assert job.state == "done" and job.progress == 1.0 and job.error is None
    np.testing.assert_array_equal(job.result.label, pred.predict_volume(case, tta=True).label)

    assert job.seconds_left is None  # finished: nothing left to estimate
    gate, reported = threading.Event(), threading.Event()

    def slow_progress_predict(*args, progress=None, **kwargs):
        time.sleep(0.2)
        progress(0.25)
        reported.set()
        gate.wait(10)
        progress(0.5)
        raise AssertionError("should have been cancelled")

    pred.predict_volume = slow_progress_predict  # type: ignore[method-assign]
    job = VolumeJob(pred, case, mc_samples=2, mc_focus=0.05).start()
    assert reported.wait(10)
    # A quarter done after >= 0.2 s: three times as long again is left (the pace so far, extrapolated).
    left = job.seconds_left
    assert left is not None and 0.6 <= left < 30
    job.cancel()
    gate.set()
    assert job.wait(timeout=10) and job.state == "cancelled" and job.result is None

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory")

    pred.predict_volume = failing  # type: ignore[method-assign]
    job = VolumeJob(pred, case).start()
    assert job.wait(timeout=10) and job.state == "failed" and "out of memory" in str(job.error)
    with pytest.raises(ValueError):
        VolumeJob(pred, case, colour="red")


def test_volume_job_stops_when_its_session_is_gone(checkpoint: Path, case: Case, monkeypatch) -> None:
    """A closed browser tab: the session check turns False and the job ends at the next batch."""
    from medvision.app_support import session_life

    pred = Predictor(checkpoint, device="cpu", dtype="float32", batch_size=1)
    asked: list[int] = []

    def still_wanted() -> bool:
        asked.append(1)
        return len(asked) < 2  # the tab closes after the first batch

    job = VolumeJob(pred, case, still_wanted=still_wanted).start()
    assert job.wait(timeout=60) and job.state == "cancelled" and job.result is None
    assert job.progress < 0.5 and len(asked) == 2  # no batch after the first False

    # The page's check: outside a server it never cancels; in one, it follows the session.
    assert session_life.current_session_alive()() is True

    class Server:
        active = True

        def is_active_session(self, session_id: str) -> bool:
            return self.active and session_id == "s1"

    class Ctx:
        session_id = "s1"

    server = Server()
    import streamlit.runtime
    import streamlit.runtime.scriptrunner

    monkeypatch.setattr(streamlit.runtime, "exists", lambda: True)
    monkeypatch.setattr(streamlit.runtime, "get_instance", lambda: server)
    monkeypatch.setattr(streamlit.runtime.scriptrunner, "get_script_run_ctx", lambda **_: Ctx())
    alive = session_life.current_session_alive()
    assert alive() is True
    server.active = False
    assert alive() is False


@pytest.fixture(scope="module")
def real_case() -> Case:
    if not (REAL_CASE / "BraTS2021_00006_flair.nii.gz").exists():
        pytest.skip(f"real BraTS case not found at {REAL_CASE}")
    from medvision.data.readers import load_case

    return load_case(REAL_CASE)


def test_real_case_geometry_and_affine_round_trip(real_case: Case, checkpoint: Path, tmp_path: Path) -> None:
    pred = Predictor(checkpoint, device="cpu")  # auto precision: bf16 where the CPU has it
    result = pred.predict_volume(real_case)
    assert result.label.shape == real_case.shape == (155, 240, 240)
    assert set(np.unique(result.label)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(result.label > 0, result.probabilities[0] > 0.5)
    out = save_prediction_nifti(result.label, real_case, tmp_path / "BraTS2021_00006_pred.nii.gz")
    saved = nib.load(out)
    source = nib.load(REAL_CASE / "BraTS2021_00006_flair.nii.gz")
    assert saved.shape == source.shape == (240, 240, 155)
    np.testing.assert_allclose(saved.affine, source.affine)
    np.testing.assert_allclose(saved.affine, real_case.affine)
    assert saved.header.get_zooms() == source.header.get_zooms()
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), case_to_nifti_axes(result.label))
    one = Predictor(checkpoint, device="cpu").predict_slice(real_case, 80)  # fresh: not from the cache
    np.testing.assert_allclose(one.probabilities, result.probabilities[:, 80], atol=2e-2)
