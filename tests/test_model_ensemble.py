"""Ensembles of training runs: the packed module averages probabilities, half-precision files, the pack
command's checks, and the whole predictor (PyTorch and ONNX Runtime, MC dropout, attention) on one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference import make_case, save_tiny

from medvision.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from medvision.data.modality_sets import keep_only
from medvision.errors import CheckpointError, MedVisionError
from medvision.inference import Predictor
from medvision.models import AttentionUNet, ModelEnsemble, build_model
from medvision.train import pack_ensemble
from medvision.train.evaluation import given_as

CONFIG = {"in_channels": 4, "out_channels": 3, "base_filters": 4, "depth": 2, "dropout": 0.2}
CONFIG["attention"] = True
SPLIT = {"train": ["a", "b"], "val": ["c"], "test": []}


def _members(tmp_path: Path, seeds=(0, 1, 2), split=SPLIT) -> list[Path]:
    paths = []
    for seed in seeds:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"split": split, "train_config": {"seed": seed}, "val_mean_dice": 0.1 * seed, "epoch": 3}
        paths.append(save_tiny(folder, seed=seed, meta=meta))
    return paths


def test_the_ensemble_output_is_the_logit_of_the_members_mean_probability() -> None:
    torch.manual_seed(0)
    ensemble = build_model({**CONFIG, "members": 3}).eval()
    assert isinstance(ensemble, ModelEnsemble) and len(ensemble.members) == 3
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(m(x)) for m in ensemble.members]).mean(0)
        assert torch.allclose(torch.sigmoid(ensemble(x)), mean, atol=1e-6)
        members_differ = (torch.sigmoid(ensemble.members[0](x)) - mean).abs().max()
        assert members_differ > 1e-3  # the members are different networks, so the mean is not any one
        logits, maps = ensemble(x, return_attention=True)
        first = ensemble.members[0](x, return_attention=True)[1]
    assert len(maps) == len(first) and maps[-1].shape == first[-1].shape
    assert torch.allclose(torch.sigmoid(logits), mean, atol=1e-6)
    assert ensemble.config == {**CONFIG, "dropout": 0.2, "members": 3}


def test_certain_members_give_a_finite_logit() -> None:
    ensemble = build_model({**CONFIG, "members": 2}).eval()
    with torch.no_grad():
        for member in ensemble.members:
            member.head.bias.fill_(1e4)  # sigmoid is exactly 1.0 in fp32
        out = ensemble(torch.randn(1, 4, 16, 16))
    assert torch.isfinite(out).all()


def test_a_half_precision_file_is_half_the_size_and_predicts_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model({**CONFIG, "base_filters": 16, "members": 2}).eval()  # tensors outweigh the header
    save_checkpoint(tmp_path / "full", model, {"target": "regions"})
    save_checkpoint(tmp_path / "half", model, {"target": "regions"}, weights_dtype="float16")
    full_size = checkpoint_paths(tmp_path / "full")[0].stat().st_size
    half_size = checkpoint_paths(tmp_path / "half")[0].stat().st_size
    assert half_size < 0.6 * full_size
    loaded, meta = load_checkpoint(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert (torch.sigmoid(loaded(x)) - torch.sigmoid(model(x))).abs().max() < 1e-3
    with pytest.raises(ValueError, match="weights_dtype"):
        save_checkpoint(tmp_path / "bad", model, {}, weights_dtype="int8")


def test_metadata_asking_for_too_many_members_is_refused(tmp_path: Path) -> None:
    model = build_model({**CONFIG, "members": 2})
    save_checkpoint(tmp_path / "e", model, {"target": "regions"})
    _, meta_path = checkpoint_paths(tmp_path / "e")
    record = json.loads(meta_path.read_text())
    record["model"]["members"] = 50
    meta_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="members=50"):
        load_checkpoint(tmp_path / "e")


def test_pack_records_the_members_and_predicts_their_mean(tmp_path: Path) -> None:
    members = _members(tmp_path)
    meta = pack_ensemble.pack(tmp_path / "ensemble", members, half=False)
    assert meta["kind"] == "ensemble" and meta["train_config"]["seed"] == [0, 1, 2]
    assert [m["val_mean_dice"] for m in meta["ensemble"]["members"]] == pytest.approx([0.0, 0.1, 0.2])
    assert "val_mean_dice" not in meta  # one run's validation is not the ensemble's
    assert meta["split"] == SPLIT
    assert meta["epoch"] == 3  # all members are epoch 3's
    case = make_case()
    options = {"device": "cpu", "dtype": "float32", "backend": "torch"}
    alone = [Predictor(p, **options).predict_volume(case).probabilities for p in members]
    together = Predictor(tmp_path / "ensemble.safetensors", **options)
    result = together.predict_volume(case)
    np.testing.assert_allclose(result.probabilities, np.mean(alone, axis=0), atol=1e-5)
    assert together.attention_map(case, 5).shape == case.image.shape[2:]
    uncertain = together.predict_volume(case, mc_samples=2)
    assert uncertain.uncertainty is not None and uncertain.uncertainty.max() > 0


def test_the_onnx_path_exports_the_ensemble(tmp_path: Path) -> None:
    members = _members(tmp_path, seeds=(3, 4))
    pack_ensemble.pack(tmp_path / "ensemble", members, half=True)
    case = make_case()
    checkpoint = tmp_path / "ensemble.safetensors"
    on_torch = Predictor(checkpoint, device="cpu", dtype="float32", backend="torch")
    on_onnx = Predictor(checkpoint, device="cpu", dtype="float32", backend="onnx")
    assert on_onnx.backend == "onnx"
    np.testing.assert_allclose(
        on_onnx.predict_volume(case).probabilities, on_torch.predict_volume(case).probabilities, atol=1e-4
    )


def test_pack_refuses_members_of_other_splits_or_networks(tmp_path: Path) -> None:
    first = _members(tmp_path / "a", seeds=(0,))[0]
    other_split = _members(tmp_path / "b", seeds=(1,), split={**SPLIT, "val": ["a"]})[0]
    with pytest.raises(CheckpointError, match="other cases"):
        pack_ensemble.pack(tmp_path / "e1", [first, other_split])
    wider = tmp_path / "wider.safetensors"
    save_checkpoint(wider, AttentionUNet(4, 3, 8, 2, 0.2, True), {"target": "regions", "split": SPLIT})
    with pytest.raises(CheckpointError, match="model differs"):
        pack_ensemble.pack(tmp_path / "e2", [first, wider])
    pack_ensemble.pack(tmp_path / "e3", [first, _members(tmp_path / "c", seeds=(2,))[0]])
    with pytest.raises(CheckpointError, match="ensemble already"):
        pack_ensemble.pack(tmp_path / "e4", [tmp_path / "e3.safetensors", first])
    assert not checkpoint_paths(tmp_path / "e4")[0].exists()  # nothing written on a refusal


def test_pack_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = _members(tmp_path, seeds=(0, 1))
    assert pack_ensemble.main([str(tmp_path / "out"), *map(str, members), "--half"]) == 0
    assert "2 members" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["ensemble"]["weights_dtype"] == "float16"
    with pytest.raises(SystemExit):
        pack_ensemble.main([str(tmp_path / "one"), str(members[0])])


def test_each_dropout_pass_runs_one_member_in_turn(tmp_path: Path) -> None:
    pack_ensemble.pack(tmp_path / "ensemble", _members(tmp_path), half=False)
    predictor = Predictor(tmp_path / "ensemble.safetensors", device="cpu", dtype="float32", backend="torch")
    ensemble = predictor.model
    calls = [0, 0, 0]
    for i, member in enumerate(ensemble.members):
        member.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    predictor.predict_volume(make_case())
    plain = list(calls)
    assert plain[0] > 0 and plain == [plain[0]] * 3  # a plain pass runs every member once per batch
    calls[:] = [0, 0, 0]
    result = predictor.predict_volume(make_case(), mc_samples=6)
    # 6 passes over the same batches: each member twice, so the passes cost two plain ones, not six.
    assert calls == [2 * plain[0]] * 3
    assert result.uncertainty is not None and float(result.uncertainty.max()) > 0
    assert ensemble._only is None  # back to the whole ensemble afterwards
    assert "ensemble of 3 networks" in predictor.describe()


def test_the_models_page_rows_of_an_ensemble(tmp_path: Path) -> None:
    from medvision.app_support.catalog import ensemble_rows

    meta = pack_ensemble.pack(tmp_path / "ensemble", _members(tmp_path, seeds=(0, 1)))
    rows = ensemble_rows(meta)
    assert [(r["member"], r["seed"], r["epoch"]) for r in rows] == [(1, "0", "3"), (2, "1", "3")]
    assert rows[1]["val mean Dice"] == pytest.approx(0.1)
    # Metadata is anyone's file: odd members are skipped or shown as text, never trusted as numbers.
    odd = {"ensemble": {"members": ["x", {"seed": "<b>", "val_mean_dice": "0.9"}]}}
    assert ensemble_rows(odd) == [
        {"member": 2, "predicts": "any subset", "seed": "<b>", "epoch": "–", "val mean Dice": None}
    ]
    assert ensemble_rows({"ensemble": "nonsense"}) == [] and ensemble_rows({}) == []


ROUTED = {**CONFIG, "in_channels": 8}  # 4 images + 4 availability planes


def _planes(batch: int, given: tuple[str, ...]) -> torch.Tensor:
    x = torch.randn(batch, 8, 16, 16)
    for i, name in enumerate(("flair", "t1", "t1ce", "t2")):
        x[:, i] *= float(name in given)
        x[:, 4 + i] = float(name in given)
    return x


def test_a_routed_subset_is_predicted_by_its_specialist_alone() -> None:
    torch.manual_seed(0)
    ensemble = build_model({**ROUTED, "members": 4, "routes": {"t1ce": [3]}}).eval()
    assert ensemble.general == (0, 1, 2) and ensemble.config["routes"] == {"t1ce": [3]}
    t1ce, four = _planes(2, ("t1ce",)), _planes(2, ("flair", "t1", "t1ce", "t2"))
    flair_t1ce = _planes(2, ("flair", "t1ce"))
    with torch.no_grad():
        assert torch.equal(ensemble(t1ce), ensemble.members[3](t1ce))
        for x in (four, flair_t1ce):  # not routed: the mean of the three general members, not the fourth
            mean = torch.stack([torch.sigmoid(ensemble.members[i](x)) for i in range(3)]).mean(0)
            assert torch.allclose(torch.sigmoid(ensemble(x)), mean, atol=1e-6)
        with ensemble.one_member(5):  # a dropout pass: within the route, or among the general members
            assert torch.equal(ensemble(t1ce), ensemble.members[3](t1ce))
            assert torch.equal(ensemble(four), ensemble.members[5 % 3](four))
        logits, maps = ensemble(t1ce, return_attention=True)
        assert torch.equal(logits, ensemble.members[3](t1ce)) and maps
        # A training batch (modality dropout, a distillation teacher) mixes subsets: row by row.
        mixed_logits, mixed_maps = ensemble(torch.cat([t1ce, four]), return_attention=True)
        assert torch.allclose(mixed_logits[:2], ensemble(t1ce), atol=1e-6)
        assert torch.allclose(mixed_logits[2:], ensemble(four), atol=1e-6)
        four_maps = ensemble(four, return_attention=True)[1]
        assert len(mixed_maps) == len(four_maps) and torch.allclose(
            mixed_maps[0][2:], four_maps[0], atol=1e-6
        )
        assert ensemble.routed(torch.cat([t1ce, four])) and not ensemble.routed(four)
    rebuilt = build_model(ensemble.config)
    assert rebuilt.routes == {"t1ce": (3,)}
    wider = build_model({**ensemble.config, "route_supersets": {"t1ce+t1": "t1ce"}}).eval()
    wider.load_state_dict(ensemble.state_dict())
    t1_t1ce = _planes(2, ("t1", "t1ce"))
    without_t1 = t1_t1ce.clone()
    without_t1[:, [1, 5]] = 0.0
    with torch.no_grad():
        assert torch.equal(wider(t1_t1ce), ensemble.members[3](without_t1))
    for supersets in ({"flair": "t1ce"}, {"t1ce": "t1ce"}, {"t1+t1ce": "flair"}):
        with pytest.raises(ValueError, match="not a larger subset"):
            build_model({**ensemble.config, "route_supersets": supersets})
    for routes, problem in (
        ({"t1cx": [3]}, "unknown modality"),
        ({"t1ce": [4]}, "empty, unknown or reused"),
        ({"t1ce": [1, 2], "flair": [0]}, "none is left"),
    ):
        with pytest.raises(ValueError, match=problem):
            build_model({**ROUTED, "members": 3, "routes": routes})
    with pytest.raises(ValueError, match="availability planes"):
        build_model({**CONFIG, "members": 2, "routes": {"t1ce": [1]}})
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model({**ROUTED, "routes": {"t1ce": [0]}})  # routes belong to an ensemble


def _availability_members(tmp_path: Path, seeds=(0, 1, 2)) -> list[Path]:
    """Tiny runs for any modality subset (4 availability planes after the images), one split."""
    paths = []
    for seed in seeds:
        folder = tmp_path / f"run{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"split": SPLIT, "train_config": {"seed": seed}}
        paths.append(save_tiny(folder, seed=seed, availability=True, meta=meta))
    return paths


def test_a_superset_route_to_the_general_members_sets_a_modality_aside() -> None:
    """All four given, predicted as FLAIR + T1ce + T2: the general members' mean on the input without T1
    (images and plane), in a plain ensemble and beside a specialist route, row by row in a mixed batch."""
    torch.manual_seed(0)
    aside = {"flair+t1+t1ce+t2": "flair+t1ce+t2"}
    four, three = _planes(2, ("flair", "t1", "t1ce", "t2")), _planes(2, ("flair", "t1ce", "t2"))
    without_t1 = four.clone()
    without_t1[:, [1, 5]] = 0.0
    for routes in ({}, {"t1ce": [3]}):
        members = 4 if routes else 3
        ensemble = build_model({**ROUTED, "members": members, "routes": routes, "route_supersets": aside})
        ensemble.eval()
        assert ensemble.general == (0, 1, 2) and ensemble.config["route_supersets"] == aside
        with torch.no_grad():
            mean = torch.stack([torch.sigmoid(ensemble.members[i](without_t1)) for i in range(3)]).mean(0)
            assert torch.allclose(torch.sigmoid(ensemble(four)), mean, atol=1e-6)
            with_t1 = torch.stack([torch.sigmoid(ensemble.members[i](four)) for i in range(3)]).mean(0)
            assert not torch.allclose(torch.sigmoid(ensemble(four)), with_t1, atol=1e-4)  # T1 did count
            assert torch.equal(ensemble.kept_input(four), without_t1)
            assert torch.equal(ensemble.kept_input(three), three)  # nothing set aside: the same tensor
            assert not ensemble.routed(four)  # the general members: the ONNX export can run it
            mixed = torch.cat([three, four])
            assert torch.equal(ensemble.kept_input(mixed), torch.cat([three, without_t1]))
            assert torch.allclose(ensemble(mixed)[2:], ensemble(four), atol=1e-6)
        assert build_model(ensemble.config).route_supersets == aside
    with pytest.raises(ValueError, match="chain"):
        build_model({**ROUTED, "members": 3, "route_supersets": {**aside, "flair+t1ce+t2": "flair+t2"}})
    with pytest.raises(ValueError, match="availability planes"):
        build_model({**CONFIG, "members": 3, "route_supersets": aside})


def test_pack_with_a_route_predicts_t1ce_alone_with_the_specialist(tmp_path: Path, capsys) -> None:
    general, (specialist,) = _availability_members(tmp_path), _availability_members(tmp_path, seeds=(7,))
    out = tmp_path / "routed"
    args = [str(out), *map(str, general), "--route", f"T1CE={specialist}", "--route-superset", "t1ce+t1=t1ce"]
    args.append("--half")
    assert pack_ensemble.main(args) == 0
    assert "4 members" in capsys.readouterr().out
    meta = json.loads((tmp_path / "routed.json").read_text())
    assert meta["model"]["routes"] == {"t1ce": [3]} and meta["model"]["members"] == 4
    assert [m.get("route") for m in meta["ensemble"]["members"]] == [None, None, None, "t1ce"]
    from medvision.app_support.catalog import ensemble_rows

    rows = ensemble_rows(
        {
            **meta,
            "ensemble": {
                "members": [
                    *meta["ensemble"]["members"][:3],
                    {**meta["ensemble"]["members"][3], "val_mean_dice": 0.1},
                ]
            },
        }
    )
    assert [r["predicts"] for r in rows] == ["any subset"] * 3 + ["t1ce alone"]
    from medvision.app_support.catalog import set_aside_note

    assert set_aside_note(meta) == (
        "Predicted as a smaller input: T1 + T1CE without T1 (the cross-validation scored the smaller input "
        "higher; model card)."
    )
    odd = {"model": {"route_supersets": {"flair+t1+t1ce+t2": "flair+t1ce+t2", "<b>x</b>": "t1"}}}
    assert set_aside_note(odd).startswith("Predicted as a smaller input: all four without T1 (")
    assert set_aside_note({"model": {}}) is None
    assert rows[3]["val mean Dice"] is None  # its validation saw all four modalities: not shown
    own = dict(
        meta,
        ensemble={
            "members": [
                *meta["ensemble"]["members"][:3],
                {"route": "t1ce", "val_mean_dice": 0.1, "val_modalities": "t1ce"},
            ]
        },
    )
    assert ensemble_rows(own)[3]["val mean Dice"] == 0.1  # validated on T1ce alone: its figure is shown
    options = {"device": "cpu", "dtype": "float32", "backend": "torch"}
    routed = Predictor(tmp_path / "routed.safetensors", **options)
    assert "ensemble of 3 networks (1 more for t1ce alone; predicts t1+t1ce as t1ce)" in routed.describe()
    assert routed.set_aside(("t1ce", "t1")) == ("t1",) and routed.set_aside(("t1ce",)) == ()
    case = make_case()
    t1ce = dataclasses.replace(case, image=keep_only(case.image, ("t1ce",)), available=("t1ce",))
    pack_ensemble.pack(tmp_path / "alone", [specialist, specialist], half=True)  # the specialist's output
    expected = Predictor(tmp_path / "alone.safetensors", **options).predict_volume(t1ce).probabilities
    np.testing.assert_allclose(routed.predict_volume(t1ce).probabilities, expected, atol=1e-5)
    # T1 + T1ce goes to the T1ce specialist with T1 removed: the same prediction as T1ce alone.
    assert meta["model"]["route_supersets"] == {"t1+t1ce": "t1ce"}
    both = dataclasses.replace(case, image=keep_only(case.image, ("t1", "t1ce")), available=("t1", "t1ce"))
    np.testing.assert_allclose(routed.predict_volume(both).probabilities, expected, atol=1e-5)
    pack_ensemble.pack(tmp_path / "plain", general, half=True)
    plain = Predictor(tmp_path / "plain.safetensors", **options)
    np.testing.assert_allclose(
        routed.predict_volume(case).probabilities, plain.predict_volume(case).probabilities, atol=1e-5
    )
    # The route is read from the input's values: ONNX Runtime runs the general members, PyTorch the route.
    on_onnx = Predictor(tmp_path / "routed.safetensors", device="cpu", dtype="float32", backend="onnx")
    assert on_onnx.backend == "onnx"
    np.testing.assert_allclose(on_onnx.predict_volume(t1ce).probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(
        on_onnx.predict_volume(case).probabilities, plain.predict_volume(case).probabilities, atol=1e-4
    )
    # All four predicted as FLAIR + T1ce + T2 by the general members: the plain ensemble's prediction without
    # T1, in PyTorch and in ONNX Runtime (which runs the general members on the input with T1 set aside).
    aside = [str(tmp_path / "aside"), *map(str, general), "--route", f"t1ce={specialist}"]
    aside += [
        "--route-superset",
        "t1+t1ce=t1ce",
        "--route-superset",
        "flair+t1+t1ce+t2=flair+t1ce+t2",
        "--half",
    ]
    assert pack_ensemble.main(aside) == 0
    prepared = plain.prepare(case)  # the same brain crop for both: only the input channels differ
    without_t1 = plain.engine.predict(given_as(prepared, ("flair", "t1ce", "t2"))).probabilities
    for backend in ("torch", "onnx"):
        predictor = Predictor(tmp_path / "aside.safetensors", **{**options, "backend": backend})
        assert predictor.backend == backend
        np.testing.assert_allclose(predictor.engine.predict(prepared).probabilities, without_t1, atol=1e-4)
    assert "predicts t1+t1ce as t1ce, flair+t1+t1ce+t2 as flair+t1ce+t2)" in predictor.describe()
    assert predictor.set_aside(("flair", "t1", "t1ce", "t2")) == ("t1",)
    assert not np.allclose(without_t1, plain.engine.predict(prepared).probabilities, atol=1e-4)
    with pytest.raises(SystemExit):
        pack_ensemble.main([str(tmp_path / "bad"), str(general[0]), "--route", "t1ce"])


def test_a_run_trained_on_another_slice_view_is_refused_where_slices_are_cut_axially(tmp_path: Path) -> None:
    from medvision.data.store import prepare_store
    from medvision.train.evaluation import evaluate_checkpoint

    axial = _members(tmp_path / "a", seeds=(0,))[0]
    folder = tmp_path / "c"
    folder.mkdir()
    coronal = save_tiny(folder, seed=1, meta={"split": SPLIT, "data": {"view": "coronal"}})
    with pytest.raises(CheckpointError, match="coronal slices"):
        Predictor(coronal, device="cpu")
    with pytest.raises(CheckpointError, match="coronal slices"):
        pack_ensemble.pack(tmp_path / "e", [axial, coronal])
    assert not checkpoint_paths(tmp_path / "e")[0].exists()
    case = dataclasses.replace(make_case(0), case_id="c")
    store = prepare_store([case], tmp_path / "s.h5", workers=1, progress=False)
    with pytest.raises(MedVisionError, match="holds axial slices but .* coronal slices"):
        evaluate_checkpoint(coronal, store, split="val", device="cpu")
