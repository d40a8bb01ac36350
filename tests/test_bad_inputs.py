"""Every broken input of tests/broken_inputs.py, fed to every entry point a user can reach.

Entry points: ``load_case``; the format's own reader (``read_nifti_files`` for a case folder's files,
``read_zip``, ``read_decathlon``, ``KaggleH5Index``); ``prepare_store``; the ``predict`` CLI
(``medvision.cli.main``, exactly what ``python -m medvision predict`` runs); and the Predict page's upload
path (``medvision.app_support.uploads.case_from_uploads``). Each must refuse with our error, name the
file, leave nothing behind (no store, no temp file, no prediction, no upload folder) and neither hang
nor run out of memory.

The jobs run in two driver processes (this file run as a script, one per core): "light" for the readers,
prepare and upload jobs (never imports torch) and "cli" for the predict jobs. Each driver imports
MedVision once, runs under a 2 GiB address-space limit (RLIMIT_AS, set before the first job) and gives every
job an alarm and a tracemalloc peak, so a hang or an attempt to allocate gigabytes shows up as a failed
job instead of taking pytest (or the machine) down. Known bugs are xfail(strict=True) with the finding
as reason (see RELIABILITY.md); they fail as soon as the bug is fixed, so the mark gets removed then.
"""

from __future__ import annotations

import ast
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import broken_inputs as bi
import pytest

REPO = Path(__file__).resolve().parents[1]
ADDRESS_SPACE_LIMIT = 2 * 1024**3  # per driver, or what the imports already mapped + 1 GiB if that is more
JOB_TIMEOUT_S = 60
MAX_JOB_SECONDS = 20.0
MAX_ALLOC_HUNGRY = 32 * 2**20  # peak traced allocation while refusing a bomb / absurd header
READER_KINDS = ("case_folder", "zip", "nifti4d", "kaggle")


# ================================================================================ the job driver


def _entry_applies(item: bi.BrokenInput, entry: str) -> bool:
    if entry in item.skip:
        return False
    if entry == "reader":
        return item.kind in READER_KINDS
    if entry == "upload":
        return bool(item.uploads)
    return True


def _reader_call(item: dict[str, Any]) -> Any:
    from medvision.data import readers

    path = Path(item["path"])
    if item["kind"] == "zip":
        return readers.read_zip(path)
    if item["kind"] == "nifti4d":
        return readers.read_decathlon(path)
    if item["kind"] == "kaggle":
        index = readers.KaggleH5Index(path)
        return index.read_volume(index.volumes[0])
    # A case folder: the four (or five) files as the app's separate-file upload hands them over.
    files: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        found = readers.classify_name(file.name.split(".", 1)[0])
        if found:
            files[found[1]] = file
    return readers.read_nifti_files(files)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _run_entry(job: dict[str, Any], work: Path) -> dict[str, Any]:
    """One (input, entry point) job; returns what happened."""
    from medvision.app_support.uploads import UploadedFile, case_from_uploads
    from medvision.data.readers import load_case
    from medvision.data.store import prepare_store

    entry, path = job["entry"], Path(job["path"])
    out = work / "out"
    out.mkdir(parents=True)
    if entry == "predict":
        return _run_cli(job, out)
    try:
        if entry == "load_case":
            value = load_case(path)
        elif entry == "reader":
            value = _reader_call(job)
        elif entry == "prepare":
            value = prepare_store(path, out / "store.h5", workers=1, progress=False)
        elif entry == "upload":
            files = [UploadedFile(Path(p).name, Path(p).read_bytes()) for p in job["uploads"]]
            value = case_from_uploads(files, out, max_bytes=10**9)
        else:
            raise ValueError(entry)
    except _JobTimeout:
        raise
    except BaseException as error:  # noqa: BLE001 - recording the exact type is the point
        return {
            "outcome": "raised",
            "type": type(error).__name__,
            "mro": [c.__name__ for c in type(error).__mro__],
            "message": str(error),
            "traceback": traceback.format_exc(),
            "leftover": _leftovers(out),
        }
    if entry == "prepare":
        Path(value).unlink()  # the store of an accepted input is not a leftover
    shape = list(value.image.shape) if hasattr(value, "image") else None
    return {"outcome": "accepted", "shape": shape, "leftover": _leftovers(out)}


def _run_cli(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """``medvision.cli.main`` as ``python -m medvision predict`` runs it, with fd 1 and 2 captured."""
    from medvision.cli import main

    argv = ["predict", job["path"], "-o", str(out / "pred.nii.gz"), "--checkpoint", job["checkpoint"]]
    captured = {1: out.parent / "stdout", 2: out.parent / "stderr"}
    saved = {fd: os.dup(fd) for fd in captured}
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, target in captured.items():
        handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    try:
        rc = main([*argv, "--device", "cpu"])
    except SystemExit as exit_:  # argparse
        rc = exit_.code if isinstance(exit_.code, int) else 1
    except _JobTimeout:
        raise
    except BaseException:  # noqa: BLE001
        traceback.print_exc()  # what the interpreter prints for an uncaught exception in `python -m`
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
    return {
        "rc": rc,
        "stdout": captured[1].read_text(errors="replace"),
        "stderr": captured[2].read_text(errors="replace"),
        "leftover": _leftovers(out),
    }


def _address_space() -> int:
    """Bytes of address space this process maps now (VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


class _JobTimeout(BaseException):
    """Raised by the alarm handler; a BaseException so no `except Exception` in MedVision swallows it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _JobTimeout(f"job still running after {JOB_TIMEOUT_S} s")


def driver_main(mode: str, jobs_path: str, results_path: str) -> None:
    """Run jobs one after the other in this process, under a 2 GiB address-space limit.

    ``mode`` "light" never imports torch (readers, prepare, upload jobs); "cli" imports it (predict jobs).
    The limit is 2 GiB of address space in all (1 GiB more than the imports took, if that is more).
    Per job: wall time and a timeout; for the inputs that claim gigabytes also the peak traced allocation
    (tracemalloc sees numpy buffers, bytes and bytearrays, so an attempt to allocate a claimed size shows
    even when the limit stops it).
    """
    import tracemalloc

    # Import before timing any job (and before tracing: imports are not the job's allocations).
    import medvision.app_support.uploads  # noqa: F401
    import medvision.data.readers  # noqa: F401
    import medvision.data.store  # noqa: F401

    if mode == "cli":
        import medvision.cli
        import medvision.inference  # noqa: F401

        medvision.cli.build_parser()
    # The limit goes on after the imports: a CUDA build of torch alone maps several GiB of address space.
    limit = max(ADDRESS_SPACE_LIMIT, _address_space() + 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    spec = json.loads(Path(jobs_path).read_text())
    work = Path(spec["work"])
    results = []
    for i, job in enumerate(spec["jobs"]):
        print(f"job {i}: {job['name']} via {job['entry']}", file=sys.stderr, flush=True)
        # Tracing slows Python code ~5x, so only the inputs that claim gigabytes are traced.
        if job["memory"]:
            tracemalloc.start()
        start = time.perf_counter()
        signal.alarm(JOB_TIMEOUT_S)
        try:
            record = _run_entry(job, work / f"{i:04d}")
        except _JobTimeout as timeout:
            record = {"outcome": "timeout", "message": str(timeout), "stderr": "", "leftover": []}
        finally:
            signal.alarm(0)
        elapsed = time.perf_counter() - start
        record.update(name=job["name"], entry=job["entry"], elapsed=elapsed, address_space_limit=limit)
        if job["memory"]:
            record["peak_alloc"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        results.append(record)
    Path(results_path).write_text(json.dumps(results))


# ======================================================================================= fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("broken")
    items = bi.build_corpus(root / "corpus")
    valid = root / "valid" / bi.CASE_ID
    bi.write_valid_case(valid)
    return {
        "root": root,
        "items": {item.name: item for item in items},
        "valid": valid,
        "digests": {item.name: bi.digest(item.path) for item in items},
    }


def _tiny_checkpoint(folder: Path) -> Path:
    import torch

    from medvision.checkpoint import save_checkpoint
    from medvision.models import AttentionUNet

    torch.manual_seed(0)
    model = AttentionUNet(in_channels=4, out_channels=3, base_filters=4, depth=2)
    path = folder / "tiny.safetensors"
    save_checkpoint(path, model, {"target": "regions", "patch_size": [16, 16]})
    return path


@pytest.fixture(scope="module")
def results(corpus, tmp_path_factory) -> dict[tuple[str, str], dict[str, Any]]:
    """Run every (input, entry point) job in the two drivers; results keyed by (name, entry)."""
    root = tmp_path_factory.mktemp("jobs")
    checkpoint = _tiny_checkpoint(root)
    uploads = tuple(sorted(corpus["valid"].iterdir()))
    valid = bi.BrokenInput("valid_case", corpus["valid"], "case_folder", "", bi.CASE_ID, uploads=uploads)
    jobs = []
    # The valid case first: its run must not depend on what the bombs before it left in the driver's
    # address space (a full CI run once failed there: deepbet could not map 128 MiB under the limit).
    for item in [valid, *corpus["items"].values()]:
        for entry in bi.ENTRY_POINTS:
            if _entry_applies(item, entry):
                jobs.append(
                    {
                        "name": item.name,
                        "entry": entry,
                        "path": str(item.path),
                        "kind": item.kind,
                        "uploads": [str(p) for p in item.uploads],
                        "checkpoint": str(checkpoint),
                        "memory": item.memory,
                    }
                )
    # HOME: the ONNX cache, if any, goes here. MALLOC_ARENA_MAX: every thread's malloc arena reserves 64 MiB
    # of address space, which RLIMIT_AS counts though little of it is used.
    env = {**os.environ, "HOME": str(root / "home"), "MALLOC_ARENA_MAX": "2"}
    procs = []
    for mode in ("light", "cli"):
        spec = root / f"jobs_{mode}.json"
        chosen = [job for job in jobs if (job["entry"] == "predict") == (mode == "cli")]
        spec.write_text(json.dumps({"work": str(root / f"work_{mode}"), "jobs": chosen}))
        out = root / f"results_{mode}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", mode, str(spec), str(out)]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True), out))
    records = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=240)
        # A driver killed by a crash or a hang in C code: the last "job N" line of its stderr names the input.
        assert proc.returncode == 0, err[-3000:]
        records.extend(json.loads(out.read_text()))
    assert len(records) == len(jobs)
    if os.environ.get("MEDVISION_DUMP_JOBS"):  # raw records, used to write the table in RELIABILITY.md
        dump = {"corpus_root": str(corpus["root"] / "corpus"), "records": records}
        Path(os.environ["MEDVISION_DUMP_JOBS"]).write_text(json.dumps(dump))
    return {(r["name"], r["entry"]): r for r in records}


# ========================================================================================== tests


def test_corpus_has_many_distinct_kinds(corpus) -> None:
    names = [spec.name for spec in bi.SPECS]
    assert len(names) >= 30 and len(set(names)) == len(names)
    kinds = {item.kind for item in corpus["items"].values()}
    assert kinds == {"case_folder", "nifti4d", "zip", "kaggle", "file", "folder", "missing"}
    for item in corpus["items"].values():
        assert item.expected == item.expected.lower(), item.name
        assert item.path.exists() == (item.kind != "missing"), item.name
        assert all(p.is_file() for p in item.uploads), item.name


def _applicable_entries() -> dict[str, list[str]]:
    """Input name -> the entry points it applies to, from a throwaway build of the corpus (a few seconds):
    whether an entry applies depends on what the build made (its kind, its upload files)."""
    with tempfile.TemporaryDirectory(prefix="medvision-corpus-") as tmp:
        items = bi.build_corpus(Path(tmp))
    return {item.name: [e for e in bi.ENTRY_POINTS if _entry_applies(item, e)] for item in items}


def _params() -> list[Any]:
    """Only the (input, entry point) pairs that apply: a pair that does not is no test, not a skip."""
    params = []
    applicable = _applicable_entries()
    for spec in bi.SPECS:
        for entry in applicable[spec.name]:
            finding = spec.findings.get(entry)
            marks = [pytest.mark.xfail(strict=True, reason=finding)] if finding else []
            params.append(pytest.param(spec.name, entry, marks=marks, id=f"{spec.name}-{entry}"))
    return params


def _problem(text: str, item: bi.BrokenInput, corpus_root: Path) -> str:
    """The message without the corpus folder, whose name (the kind's name) must not satisfy a check."""
    return text.replace(str(corpus_root / item.name), "<input>").lower()


def _check_refusal(item: bi.BrokenInput, entry: str, record: dict[str, Any], corpus_root: Path) -> None:
    where = f"{item.name} via {entry}: {record.get('message') or record.get('stderr', '')[-2000:]}"
    assert record.get("outcome") != "timeout", f"{where}: hangs"
    expected = item.expected
    blame = item.blame
    if entry == "upload":
        expected = item.upload_expected or expected
        blame = item.upload_blame or blame
    if entry == "predict":
        stderr = record["stderr"]
        assert record["rc"] == 2, f"{where}: exit code {record['rc']}"
        assert "Traceback" not in stderr, where
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"{where}: stderr has {len(lines)} lines"
        assert lines[0].startswith("error: ") and blame in lines[0], where
        assert expected in _problem(lines[0], item, corpus_root), where
        assert record["leftover"] == [], f"{where}: left {record['leftover']}"
        return
    assert record.get("outcome") == "raised", f"{where}: accepted, shape {record.get('shape')}"
    assert "InputDataError" in record["mro"], f"{where}: raised {record['type']}\n{record['traceback']}"
    message = record["message"]
    assert blame in message, where
    assert expected in _problem(message, item, corpus_root), where
    assert "medvision-zip-" not in message and "upload-" not in message, f"{where}: names a temporary path"
    assert record["leftover"] == [], f"{where}: left {record['leftover']}"
    assert "Traceback" not in record.get("stderr", ""), where


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("name", "entry"), _params())
def test_broken_input_is_refused_clearly(corpus, results, name: str, entry: str) -> None:
    item = corpus["items"][name]
    record = results[(name, entry)]
    _check_refusal(item, entry, record, corpus["root"] / "corpus")
    assert record["elapsed"] < MAX_JOB_SECONDS, f"{name} via {entry} took {record['elapsed']:.1f} s"
    if item.memory:
        peak = record["peak_alloc"]
        assert peak < MAX_ALLOC_HUNGRY, f"{name} via {entry} allocated {peak / 2**20:.0f} MiB"


@pytest.mark.timeout(300)
def test_memory_hungry_inputs_were_refused_under_the_address_space_limit(corpus, results) -> None:
    """The bombs and absurd headers ran under RLIMIT_AS=2 GiB: refused with little memory, not by luck."""
    hungry = [item for item in corpus["items"].values() if item.memory]
    assert len(hungry) >= 5
    for item in hungry:
        for entry in bi.ENTRY_POINTS:
            record = results.get((item.name, entry))
            if record is None or entry in item.findings:
                continue
            assert record.get("outcome") != "timeout", (item.name, entry)
            assert record["peak_alloc"] < MAX_ALLOC_HUNGRY, (item.name, entry, record["peak_alloc"])


@pytest.mark.timeout(300)
def test_sources_are_never_modified(corpus, results) -> None:
    assert results  # every job has run
    for name, item in corpus["items"].items():
        assert bi.digest(item.path) == corpus["digests"][name], name


@pytest.mark.timeout(300)
def test_valid_control_case_passes_every_entry_point(results) -> None:
    """The same small case, undamaged, is accepted everywhere: the refusals above are about the damage."""
    for entry in bi.ENTRY_POINTS:
        record = results[("valid_case", entry)]
        assert record.get("outcome") != "timeout", entry
        if entry == "predict":
            assert record["rc"] == 0, record["stderr"][-2000:]
            assert record["leftover"] == ["pred.nii.gz"]
            assert "Traceback" not in record["stderr"]
        else:
            assert record["outcome"] == "accepted", record.get("traceback")
            if entry != "prepare":
                assert record["shape"] == [4, 8, 16, 16], entry
            assert record["leftover"] == [], entry


@pytest.mark.timeout(120)
def test_python_m_medvision_predict_in_a_real_process(corpus, tmp_path) -> None:
    """The drivers call medvision.cli.main; this runs the real `python -m medvision predict` once."""
    checkpoint = _tiny_checkpoint(tmp_path)
    item = corpus["items"]["zip_broken_case_inside"]
    out = tmp_path / "out" / "pred.nii.gz"
    out.parent.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "medvision",
        "predict",
        str(item.path),
        "-o",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and item.path.name in lines[0] and item.blame in lines[0], lines
    assert item.expected in lines[0].lower(), lines
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------ the Predict page


@pytest.fixture(scope="module")
def app_home(tmp_path_factory):
    import streamlit  # noqa: F401

    from medvision.app_support import catalog
    from medvision.app_support.workspace import settings_from_env

    home = tmp_path_factory.mktemp("app_home")
    env = {"MEDVISION_HOME": str(home), "MEDVISION_DEMO_CASES": "2", "MEDVISION_DEMO_SIZE": "16,32,32"}
    settings = settings_from_env(env)
    catalog.ensure_demo_cohort(settings)
    _tiny_checkpoint(settings.workspace.models)
    return home, env


@pytest.mark.timeout(180)
def test_predict_page_shows_upload_errors_then_serves_a_valid_upload(corpus, app_home, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    home, env = app_home
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MEDVISION_DATA_ROOTS", raising=False)
    monkeypatch.setenv("HOME", str(home))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page("pages/predict.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="predict_input").set_value("Upload files").run()

    for name in ("truncated_gzip", "zip_slip", "decathlon_3_channels", "modalities_different_shapes"):
        item = corpus["items"][name]
        files = [(p.name, p.read_bytes(), "application/octet-stream") for p in item.uploads]
        at.get("file_uploader")[0].set_value(files).run()
        assert not at.exception, (name, [e.value for e in at.exception])
        errors = [str(e.value) for e in at.error]
        assert len(errors) == 1 and errors[0].startswith("Cannot use this upload"), (name, errors)
        assert item.blame in errors[0] and item.expected in errors[0].lower(), (name, errors)
        assert "upload-" not in errors[0], errors  # never the server's temporary folder
    assert not any((home / "uploads").iterdir()), "an upload folder was left behind"

    valid = sorted(corpus["valid"].iterdir())
    at.get("file_uploader")[0].set_value([(p.name, p.read_bytes(), "application/gzip") for p in valid]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [str(e.value) for e in at.error]
    caption = " ".join(str(c.value) for c in at.caption)
    assert f"Case **{bi.CASE_ID}**" in caption and "8×16×16" in caption, caption
    job = at.session_state["predict_job"]
    job.cancel()


# ------------------------------------------------------------------------------------------ security

USER_FACING_CODE = [REPO / "medvision", REPO / "app.py", REPO / "pages"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _python_files() -> list[Path]:
    files = []
    for root in USER_FACING_CODE:
        files.extend(sorted(root.rglob("*.py")) if root.is_dir() else [root] if root.is_file() else [])
    return files


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _pickle_problems(files: list[Path]) -> list[str]:
    """Imports of pickle-family modules, torch.load without weights_only=True, np.load allowing pickles,
    pandas.read_pickle / torch.jit.load calls. (AST, so comments and strings do not count.)"""
    problems = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.name if not path.is_relative_to(REPO) else path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = [n for n in names if n.split(".")[0] in PICKLE_MODULES]
                if bad:
                    problems.append(f"{where}:{node.lineno} imports {bad}")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load"):
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno} np.load with allow_pickle")
            if name.endswith(("read_pickle", "jit.load")):
                problems.append(f"{where}:{node.lineno} calls {name}")
    return problems


def test_no_pickle_path_for_weights_or_user_data(tmp_path: Path) -> None:
    files = _python_files()
    assert len(files) > 20 and any(f.name == "checkpoint.py" for f in files)
    assert _pickle_problems(files) == []
    # The scan itself catches each pattern it looks for.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nfrom joblib import load\nimport torch, numpy as np, pandas as pd\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\n"
        "np.load('x', allow_pickle=True)\npd.read_pickle('x')\ntorch.jit.load('x')\n"
        "# torch.load('in a comment')\ns = 'import pickle'\n"
    )
    assert len(_pickle_problems([bad])) == 7, _pickle_problems([bad])


class _Payload:
    """Unpickling this creates a marker file: proof that a loader ran pickle on our bytes."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.timeout(120)
def test_a_pickle_disguised_as_a_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    """The attacker controls both files (weights and matching JSON checksum); nothing gets unpickled."""
    import hashlib
    import pickle

    import torch

    from medvision.checkpoint import load_checkpoint
    from medvision.errors import CheckpointError
    from medvision.inference import Predictor

    marker = tmp_path / "pwned"
    checkpoint = _tiny_checkpoint(tmp_path)
    meta_path = checkpoint.with_suffix(".json")
    payloads = {
        "plain pickle": pickle.dumps(_Payload(marker)),
        "torch.save zip": None,
        "safetensors header claiming 2**60 bytes": struct.pack("<Q", 2**60) + b"{}",
    }
    for label, data in payloads.items():
        if data is None:
            torch.save({"state": _Payload(marker)}, checkpoint)
            data = checkpoint.read_bytes()
        checkpoint.write_bytes(data)
        meta = json.loads(meta_path.read_text())
        meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(checkpoint)
        assert checkpoint.name in str(info.value), label
        with pytest.raises(CheckpointError):
            Predictor(checkpoint, device="cpu")
        assert not marker.exists(), f"{label}: the payload ran"


@pytest.mark.timeout(120)
def test_zip_extraction_is_bounded(corpus, tmp_path: Path) -> None:
    """safe_extract writes nothing for bombs it can see from the directory, at most the declared bytes for
    a bomb that lies about its size, and never a file outside its destination."""
    from medvision.data.safe_zip import safe_extract
    from medvision.errors import InputDataError

    items = corpus["items"]
    cases = {
        "zip_bomb": 0,  # 2.1 GB declared: refused from the central directory
        "zip_bomb_bzip2": 0,  # ratio
        "zip_many_members": 0,
        "zip_slip": 0,
        "zip_absolute_path": 0,
        "zip_symlink": 0,
        "zip_bomb_lying_size": 4096,  # declares 4 kB: zipfile stops there and the CRC check refuses it
    }
    for name, most in cases.items():
        dest = tmp_path / name / "dest"
        dest.mkdir(parents=True)
        with pytest.raises(InputDataError) as info:
            safe_extract(items[name].path, dest)
        assert items[name].path.name in str(info.value)
        written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        assert written <= most, (name, written)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["dest"], name
    # The per-archive limit is enforced on real bytes too: a valid case under a 10 kB limit is refused.
    small = tmp_path / "limit" / "dest"
    small.mkdir(parents=True)
    archive = bi.zip_folder(corpus["valid"], tmp_path / "limit" / "case.zip")
    with pytest.raises(InputDataError, match="exceeds the limit"):
        safe_extract(archive, small, max_uncompressed_bytes=10_000)
    assert list(small.iterdir()) == []


if __name__ == "__main__" and sys.argv[1:2] == ["--driver"]:
    driver_main(*sys.argv[2:5])
