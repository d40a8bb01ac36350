"""Every file read is confined: each test performs one attack on a file-reading path and checks the refusal.

The attacker can write to a shared data folder (``MEDVISION_DATA_ROOTS``) or drop files into the workspace,
and wants the app to read something else on the server, or to make it allocate gigabytes. Each refusal is
one of our errors and names the file it refuses, never where a link leads.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medvision.app_support import catalog, uploads
from medvision.app_support.workspace import confine, settings_from_env
from medvision.data import readers
from medvision.data.case import MODALITIES
from medvision.data.kaggle_h5 import KaggleH5Index
from medvision.data.readers import list_case_sources, load_case, read_brats_folder, read_decathlon
from medvision.data.store import SliceStore, prepare_store
from medvision.errors import CheckpointError, InputDataError, PathNotAllowedError

SHAPE = (12, 10, 6)  # tiny NIfTI volumes (i, j, k)
SLICE = (12, 10)  # tiny Kaggle slices
SECRET = b"server secret: never shown in the app\n" * 64


def nifti(path: Path, shape: tuple[int, ...] = SHAPE, seed: int = 0, dtype=np.int16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(1, 100, shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def brats_case(folder: Path, *, with_label: bool = True) -> Path:
    for seed, modality in enumerate(MODALITIES):
        nifti(folder / f"{folder.name}_{modality}.nii.gz", seed=seed)
    if with_label:
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), folder / f"{folder.name}_seg.nii.gz")
    return folder


def kaggle_slice(path: Path, image: object = None) -> Path:
    """A valid slice file; ``image`` (a callable taking the open file) replaces how 'image' is made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        if image is None:
            handle.create_dataset("image", data=np.ones((*SLICE, 4)))
        else:
            image(handle)
        handle.create_dataset("mask", data=np.zeros((*SLICE, 3), np.uint8))
    return path


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A file outside every data folder, holding exactly the bytes of one float64 (12, 10, 4) slice."""
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(SECRET[: np.prod((*SLICE, 4)) * 8].ljust(int(np.prod((*SLICE, 4))) * 8, b"!"))
    return path


def refused(call, *names: str, match: str, error: type[Exception] = InputDataError) -> str:
    with pytest.raises(error, match=match) as info:
        call()
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not named in {message!r}"
    assert "server secret" not in message
    return message


# ------------------------------------------------------------------ 1. HDF5 objects reading other files


def _external_storage(secret: Path):
    def make(handle: h5py.File) -> None:
        size = int(np.prod((*SLICE, 4))) * 8
        handle.create_dataset("image", shape=(*SLICE, 4), dtype="f8", external=[(str(secret), 0, size)])

    return make


def _virtual(secret_h5: Path):
    def make(handle: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(*SLICE, 4), dtype="f8")
        layout[:] = h5py.VirtualSource(str(secret_h5), "data", shape=(*SLICE, 4))
        handle.create_virtual_dataset("image", layout)

    return make


def _external_link(secret_h5: Path):
    def make(handle: h5py.File) -> None:
        handle["image"] = h5py.ExternalLink(str(secret_h5), "/data")

    return make


def _soft_link(_: Path):
    def make(handle: h5py.File) -> None:
        handle.create_dataset("hidden", data=np.ones((*SLICE, 4)))
        handle["image"] = h5py.SoftLink("/hidden")

    return make


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_external_storage, "keeps its bytes in external files"),
        (_virtual, "virtual dataset"),
        (_external_link, "external link to another file"),
        (_soft_link, "soft link"),
    ],
    ids=["external-storage", "virtual-dataset", "external-link", "soft-link"],
)
def test_kaggle_slice_whose_image_lives_in_another_file_is_refused(tmp_path, secret, make, match) -> None:
    secret_h5 = secret.with_suffix(".h5")
    with h5py.File(secret_h5, "w") as handle:
        handle.create_dataset("data", data=np.full((*SLICE, 4), 7.0))
    argument = secret if make is _external_storage else secret_h5
    folder = tmp_path / "root" / "kaggle"
    kaggle_slice(folder / "volume_1_slice_0.h5", image=make(argument))
    refused(lambda: KaggleH5Index(folder).read_volume(1), "volume_1_slice_0.h5", "/image", match=match)
    (ref,) = list_case_sources(folder)
    refused(ref.load, "volume_1_slice_0.h5", match=match)


def _store(tmp_path: Path) -> tuple[Path, str]:
    path = prepare_store(
        brats_case(tmp_path / "cases" / "Case_001"), tmp_path / "store.h5", workers=1, progress=False
    )
    return path, "Case_001"


def test_store_whose_data_lives_in_other_files_is_refused(tmp_path, secret) -> None:
    path, case_id = _store(tmp_path)
    with SliceStore(path) as store:
        depth, height, width = store.read_image(case_id).shape[1:]
    secret_h5 = secret.with_suffix(".h5")
    with h5py.File(secret_h5, "w") as handle:
        handle.create_dataset("data", data=np.zeros((4, depth, height, width), np.float16))
        handle.create_dataset("ids", data=np.array([b"Case_001"]))
    with h5py.File(path, "a") as handle:
        group = handle["cases"][case_id]
        del group["image"]
        group.create_dataset(
            "image",
            shape=(4, depth, height, width),
            dtype="f2",
            external=[(str(secret), 0, h5py.h5f.UNLIMITED)],
        )
    with SliceStore(path) as store:
        refused(
            lambda: store.read_image(case_id), "store.h5", f"/cases/{case_id}/image", match="external files"
        )
        refused(lambda: store.read_slice(case_id, 0), "store.h5", match="external files")
    with h5py.File(path, "a") as handle:
        del handle["slices"]
        handle["slices"] = h5py.ExternalLink(str(secret_h5), "/")
    with SliceStore(path) as store:
        refused(store.slice_table, "store.h5", "/slices", match="external link")
    with h5py.File(path, "a") as handle:
        del handle["case_ids"]
        layout = h5py.VirtualLayout(shape=(1,), dtype=h5py.string_dtype())
        layout[:] = h5py.VirtualSource(str(secret_h5), "ids", shape=(1,))
        handle.create_virtual_dataset("case_ids", layout)
    refused(lambda: SliceStore(path), "store.h5", "/case_ids", match="virtual dataset")


# ---------------------------------------------------- 2. symbolic links nested inside a data folder


def test_modality_file_linking_outside_the_folder_is_refused_everywhere(tmp_path) -> None:
    root = tmp_path / "root"
    dataset = root / "dataset"
    case = brats_case(dataset / "Case_001")
    outside = nifti(tmp_path / "outside" / "stolen.nii.gz", seed=5)
    flair = case / "Case_001_flair.nii.gz"
    flair.unlink()
    flair.symlink_to(outside)
    name = "Case_001/Case_001_flair.nii.gz"
    # The CLI (no roots: the folder given is the root), the app (the confined folder), the prepare process.
    refused(lambda: list_case_sources(dataset), name, match="leads outside", error=PathNotAllowedError)
    refused(lambda: list_case_sources(dataset, roots=[root]), name, match="leads outside")
    refused(lambda: read_brats_folder(case), name, match="leads outside")
    refused(lambda: load_case(case), name, match="leads outside")
    refused(
        lambda: prepare_store(dataset, tmp_path / "s.h5", workers=1, progress=False), name, match="outside"
    )
    settings = settings_from_env(
        {"MEDVISION_HOME": str(tmp_path / "home"), "MEDVISION_DATA_ROOTS": str(root)}
    )
    source = catalog.server_source(confine(str(dataset), settings.data_roots), settings.workspace.ensure())
    message = refused(lambda: catalog.case_choices(source), name, match="leads outside")
    assert str(outside) not in message and "stolen" not in message


def test_link_to_another_file_inside_the_folder_is_still_read(tmp_path) -> None:
    dataset = tmp_path / "dataset"
    case = brats_case(dataset / "Case_001")
    shared = dataset / "shared" / "scan.nii.gz"
    shared.parent.mkdir()
    (case / "Case_001_flair.nii.gz").replace(shared)
    (case / "Case_001_flair.nii.gz").symlink_to(shared)
    (ref,) = list_case_sources(dataset)
    assert ref.load().image.shape == (4, SHAPE[2], SHAPE[0], SHAPE[1])
    assert read_brats_folder(case, roots=[dataset]).case_id == "Case_001"
    # Given the case folder alone, the file lies outside what was given: refused, not followed silently.
    refused(lambda: read_brats_folder(case), "Case_001_flair.nii.gz", match="leads outside")


def test_case_folder_linking_outside_is_not_listed_or_opened(tmp_path) -> None:
    root = tmp_path / "root"
    dataset = root / "dataset"
    brats_case(dataset / "Case_001")
    (dataset / "Case_002").symlink_to(brats_case(tmp_path / "outside" / "Case_002"), target_is_directory=True)
    assert [ref.case_id for ref in list_case_sources(dataset)] == ["Case_001"]
    refused(lambda: load_case(dataset / "Case_002", roots=[root]), "Case_002", match="leads outside")
    refused(
        lambda: read_brats_folder(dataset / "Case_002", roots=[dataset]), "Case_002", match="leads outside"
    )
    message = refused(
        lambda: confine(str(dataset / "Case_002"), (root,)), "Case_002", match="outside the allowed"
    )
    assert "outside/Case_002" not in message


def test_kaggle_slice_and_decathlon_label_linking_outside_are_refused(tmp_path, secret) -> None:
    kaggle = tmp_path / "root" / "kaggle"
    kaggle_slice(kaggle / "volume_1_slice_0.h5")
    (kaggle / "volume_1_slice_1.h5").symlink_to(kaggle_slice(tmp_path / "outside" / "x.h5"))
    refused(lambda: list_case_sources(kaggle), "volume_1_slice_1.h5", match="leads outside")
    refused(lambda: KaggleH5Index(kaggle), "volume_1_slice_1.h5", match="leads outside")

    task = tmp_path / "root" / "Task01_BrainTumour"
    image = nifti(task / "imagesTr" / "BRATS_001.nii.gz", (*SHAPE, 4))
    (task / "labelsTr").mkdir()
    outside = nifti(tmp_path / "outside" / "label.nii.gz", dtype=np.uint8)
    (task / "labelsTr" / "BRATS_001.nii.gz").symlink_to(outside)
    (ref,) = list_case_sources(task)
    refused(ref.load, "labelsTr/BRATS_001.nii.gz", match="leads outside")
    refused(lambda: read_decathlon(image), "labelsTr/BRATS_001.nii.gz", match="leads outside")


# --------------------------------------------------------------------- 3. model files in the workspace


def _dropped_model(settings, name: str = "extra", **meta) -> Path:
    from tests.tiny_checkpoint import save_tiny_checkpoint

    return save_tiny_checkpoint(settings.workspace.models / f"{name}.safetensors", **meta)


def test_model_json_pointing_at_a_run_outside_the_workspace_shows_no_curves(tmp_path) -> None:
    settings = settings_from_env({"MEDVISION_HOME": str(tmp_path / "home")}, repo_root=tmp_path / "repo")
    settings.workspace.ensure()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.jsonl").write_text('{"kind": "step", "step": 1, "loss": 1.0}\n')
    _dropped_model(settings, run_dir=str(elsewhere))
    inside = settings.workspace.runs / "linked"
    inside.mkdir()
    (inside / "metrics.jsonl").symlink_to(elsewhere / "metrics.jsonl")
    _dropped_model(settings, "second", run_dir=str(inside))
    for choice in catalog.model_choices(settings):
        assert catalog.run_dir_of(choice, catalog.model_meta(choice)) is None, choice.label
    (settings.workspace.runs / "good").mkdir()
    (settings.workspace.runs / "good" / "metrics.jsonl").write_text("{}\n")
    _dropped_model(settings, "third", run_dir=str(settings.workspace.runs / "good"))
    third = [c for c in catalog.model_choices(settings) if c.label == "Model third"][0]
    assert catalog.run_dir_of(third, catalog.model_meta(third)) == settings.workspace.runs / "good"


def test_model_json_asking_for_a_huge_network_is_refused_before_building_it(tmp_path, monkeypatch) -> None:
    import torch

    from medvision import checkpoint
    from tests.tiny_checkpoint import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / "m.safetensors")
    meta_path = path.with_suffix(".json")
    record = json.loads(meta_path.read_text())
    record["model"]["base_filters"] = 2048
    meta_path.write_text(json.dumps(record))
    refused(
        lambda: checkpoint.read_checkpoint_meta(path),
        "m.json",
        match="base_filters=2048 is outside 1..128",
        error=CheckpointError,
    )
    # Within the bounds but not what the weights hold (~1 GB of parameters): compared on the meta device.
    record["model"].update(base_filters=128, depth=6)
    meta_path.write_text(json.dumps(record))
    built_on: list[str] = []
    real_build = checkpoint.build_model

    def spying_build(config):
        built_on.append(torch.empty(0).device.type)
        return real_build(config)

    monkeypatch.setattr(checkpoint, "build_model", spying_build)
    refused(
        lambda: checkpoint.load_checkpoint(path),
        "m.safetensors",
        match="do not fit the model",
        error=CheckpointError,
    )
    assert built_on == ["meta"], built_on


# ------------------------------------------------------------------------------ 4. typed server paths


def test_typed_paths_are_refused_as_typed_without_revealing_targets(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "loop").symlink_to(root / "loop")
    (root / "escape").symlink_to(tmp_path / "hidden-target")
    (tmp_path / "hidden-target").mkdir()
    with open(__file__, "rb") as handle:
        fd_path = f"/proc/self/fd/{handle.fileno()}"
        typed = [
            fd_path,
            "/proc/self/exe",
            "a" * 300,
            "~nosuchuser-medvision/x",
            str(root / "loop"),
            str(root / "escape"),
            f"{root}/{'b' * 300}/x",
        ]
        for text in typed:
            with pytest.raises(PathNotAllowedError) as info:
                confine(text, (root,))
            message = str(info.value)
            assert message.startswith(text[:100]), message
            for hidden in (os.path.realpath(sys.executable), __file__, "hidden-target", str(os.getpid())):
                assert hidden not in message.replace(text[:119], ""), (text, message)


# --------------------------------------------------------- 5. decoded size and upload size come first


def _claiming_nifti(shape: tuple[int, int, int], zeros_member: bytes) -> bytes:
    """A .nii.gz of ``shape`` int16 zeros: the header, then repeated gzip members (quick to make)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_data_offset(352)
    header.set_sform(np.eye(4), 1)
    head = header.binaryblock + b"\0" * 4
    members = -(-(shape[0] * shape[1] * shape[2] * 2) // (1 << 24))
    return gzip.compress(head, mtime=0) + zeros_member * members


@pytest.fixture(scope="module")
def zeros_member() -> bytes:
    return gzip.compress(bytes(1 << 24), compresslevel=1, mtime=0)


def test_small_zip_decoding_to_gigabytes_is_refused_from_the_headers(
    tmp_path, monkeypatch, zeros_member
) -> None:
    shape = (512, 512, 384)  # 4 of these are 403 M voxels: 1.6 GB as the float32 case image
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        volume = _claiming_nifti(shape, zeros_member)
        for modality in MODALITIES:
            zipped.writestr(f"Big_001/Big_001_{modality}.nii.gz", volume)
    assert archive.getbuffer().nbytes < 50_000_000

    def no_voxels(volume):
        raise AssertionError(f"voxels of {volume.path.name} were read")

    monkeypatch.setattr(readers, "read_nifti_data", no_voxels)
    files = [uploads.UploadedFile("big.zip", archive.getvalue())]
    refused(
        lambda: uploads.case_from_uploads(files, tmp_path / "up", max_bytes=10**9),
        "big.zip",
        "Big_001_flair.nii.gz",
        match="more than the limit of 67,108,864 voxels per case",
    )


def test_upload_total_is_checked_from_sizes_before_any_byte_is_read(tmp_path) -> None:
    def never_read():
        raise AssertionError("the bytes were read before the size was checked")

    big = [uploads.StreamedUpload(f"C_{m}.nii.gz", 315_000_000, never_read) for m in MODALITIES]
    refused(
        lambda: uploads.case_from_uploads(big, tmp_path / "up", max_bytes=1_000_000_000),
        "C_flair.nii.gz",
        match="upload is 1260 MB, more than the 1000 MB limit",
    )
    liar = io.BytesIO(b"\0" * 5_000)
    lying = [
        uploads.streamed_upload(
            type("F", (), {"name": "c.nii.gz", "size": 100, "seek": liar.seek, "read": liar.read})()
        )
    ]
    refused(
        lambda: uploads.case_from_uploads(lying, tmp_path / "up", max_bytes=10**6),
        "c.nii.gz",
        match="more than the 100 bytes reported",
    )
    assert not any((tmp_path / "up").iterdir())


# ------------------------------------------------------------------ 6. no writes outside the workspace


def test_zips_are_extracted_inside_the_workspace(tmp_path, monkeypatch) -> None:
    case = brats_case(tmp_path / "src" / "Case_001")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in sorted(case.iterdir()):
            zipped.write(file, f"Case_001/{file.name}")
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(system_tmp))
    extracted_in: list[Path] = []
    real_extract = readers.safe_extract

    def spying_extract(zip_path, dest, **kwargs):
        extracted_in.append(Path(dest))
        return real_extract(zip_path, dest, **kwargs)

    monkeypatch.setattr(readers, "safe_extract", spying_extract)
    settings = settings_from_env({"MEDVISION_HOME": str(tmp_path / "home")}, repo_root=tmp_path / "repo")
    workspace = settings.workspace.ensure()
    uploads.case_from_uploads(
        [uploads.UploadedFile("c.zip", archive.getvalue())], workspace.uploads, max_bytes=10**8
    )
    server = tmp_path / "home" / "data" / "zips"
    server.mkdir()
    (server / "Case_001.zip").write_bytes(archive.getvalue())
    (choice,) = catalog.case_choices(catalog.server_source(server, workspace))
    choice.load()
    assert len(extracted_in) == 2, extracted_in
    assert all(p.is_relative_to(workspace.home) for p in extracted_in), extracted_in
    assert not any(system_tmp.iterdir())


def test_onnx_runtime_writes_nothing_to_the_home_folder(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "import sys, numpy as np; from pathlib import Path; from medvision.onnx_backend import OnnxRunner; "
        "print(OnnxRunner(Path(sys.argv[1]), 1)(np.ones(1, np.float32)))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.onnx")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(home.rglob("*")) == [], list(home.rglob("*"))
