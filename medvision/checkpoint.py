"""Checkpoint files: weights in safetensors (``name.safetensors``) plus JSON metadata (``name.json``).

No pickle is involved anywhere, so loading a checkpoint cannot run code. Writes are atomic per file: each is
written to a temporary file in the same folder and moved into place with ``os.replace``; the weights go
first and the metadata last, and the metadata records the weights' SHA-256, so a pair left mismatched by a
crash between the two moves (or by copying files around) is detected on load instead of used silently.

The metadata may come from anyone (a file dropped into the workspace), so its model config is held to
``MODEL_LIMITS`` when read, and on load the model is first built on PyTorch's ``meta`` device (shapes only,
no memory) and compared with the tensors in the weights file: a forged ``"base_filters": 2048`` is refused
before the gigabytes it asks for are allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from medvision.errors import CheckpointError
from medvision.models import build_model

logger = logging.getLogger(__name__)

FORMAT = "medvision-checkpoint"
VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"
RESERVED_KEYS: tuple[str, ...] = ("format", "version", "model", "weights_file", "weights_sha256")
# Prefixes added by DistributedDataParallel (module.) and torch.compile (_orig_mod.).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
# The weights the metadata on disk describes, kept while a new pair is moved into place (see save_checkpoint).
PREVIOUS_SUFFIX = ".prev"
# Sane bounds (inclusive) for the architecture numbers of a checkpoint's model config. The presets use 16-32
# base filters and depth 4; 128 and 6 leave room for bigger models (~300 M parameters at most).
MODEL_LIMITS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 16),
    "out_channels": (1, 16),
    "base_filters": (1, 128),
    "depth": (1, 6),
    "members": (1, 8),  # networks in an ensemble (medvision.models.ensemble)
}
# Weights may be stored in half precision to halve the file (an ensemble of three fits the 20 MB budget);
# they are loaded into fp32 parameters, so inference runs as it would with the fp32 file.
WEIGHT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``x``, ``x.safetensors`` or ``x.json`` -> (``x.safetensors``, ``x.json``)."""
    path = Path(path)
    if path.suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + META_SUFFIX)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (``.module``) and/or torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` (in any nesting) from every key."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it, then os.replace it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a checkpoint should be readable like any written file.
        os.chmod(tmp_name, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _previous_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.name + PREVIOUS_SUFFIX)


def _keep_previous(weights_path: Path, meta_path: Path) -> bool:
    """Keep the weights that the metadata on disk describes as ``name.safetensors.prev`` (a hard link where
    the file system has them, else a copy), atomically. False when there is nothing to keep, or when an
    earlier save was interrupted (the weights on disk do not match the metadata; .prev already does)."""
    try:
        described = json.loads(meta_path.read_text(encoding="utf-8"))["weights_sha256"]
        current = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if current != described:
        return False
    previous = _previous_path(weights_path)
    fd, tmp_name = tempfile.mkstemp(dir=weights_path.parent, prefix=f".{previous.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp_name)
        try:
            os.link(weights_path, tmp_name)
        except OSError:
            shutil.copyfile(weights_path, tmp_name)
        os.replace(tmp_name, previous)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return True


def save_checkpoint(
    path: str | Path, model: nn.Module, meta: dict[str, Any], *, weights_dtype: str = "float32"
) -> None:
    """Write ``name.safetensors`` (weights) then ``name.json`` (``meta`` + format, version, model config,
    weights file name and SHA-256). ``model`` may be wrapped by DDP or torch.compile. ``weights_dtype``
    "float16" stores the floating-point tensors in half precision (integer buffers stay as they are)."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {tuple(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    weights_path, meta_path = checkpoint_paths(path)
    clashes = sorted(set(meta) & set(RESERVED_KEYS))
    if clashes:
        raise ValueError(f"meta must not set the reserved keys {clashes}")
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"{type(inner).__name__} has no .config dict; cannot describe it in the checkpoint")
    # Serialise meta before touching the disk so a non-JSON meta fails without leaving new weights behind.
    state = strip_wrapper_prefixes(inner.state_dict())
    stored = WEIGHT_DTYPES[weights_dtype]
    tensors = {
        key: value.detach().to("cpu", dtype=stored if value.is_floating_point() else value.dtype).contiguous()
        for key, value in state.items()
    }
    weights = save_safetensors_bytes(tensors, metadata={"format": FORMAT})
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model": dict(config),
        "weights_file": weights_path.name,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **meta,
    }
    meta_bytes = json.dumps(record, indent=2, sort_keys=False).encode("utf-8")
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # The two files are moved into place one after the other. A process killed between the moves leaves new
    # weights beside old metadata; the old weights, kept as .prev until both moved, still match it.
    kept = _keep_previous(weights_path, meta_path)
    try:
        _atomic_write(weights_path, weights)
    except BaseException:
        if kept:  # the weights were not replaced: the pair on disk is whole, the copy not needed
            _previous_path(weights_path).unlink(missing_ok=True)
        raise
    _atomic_write(meta_path, meta_bytes)
    _previous_path(weights_path).unlink(missing_ok=True)
    logger.info("saved checkpoint %s (%d tensors)", weights_path, len(tensors))


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The validated JSON metadata of a checkpoint (does not read or verify the weights)."""
    _, meta_path = checkpoint_paths(path)
    if not meta_path.is_file():
        raise CheckpointError(meta_path, "checkpoint metadata file not found")
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(meta_path, f"cannot read checkpoint metadata as JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(meta_path, f'not a MedVision checkpoint (no "format": "{FORMAT}")')
    version = record.get("version")
    if version != VERSION:
        raise CheckpointError(
            meta_path, f"unsupported checkpoint version {version!r} (this MedVision reads {VERSION})"
        )
    if not isinstance(record.get("model"), dict) or not isinstance(record.get("weights_sha256"), str):
        raise CheckpointError(meta_path, "checkpoint metadata lacks the model config or the weights checksum")
    _check_model_limits(meta_path, record["model"])
    return record


def _check_model_limits(meta_path: Path, config: dict[str, Any]) -> None:
    """Refuse architecture numbers outside ``MODEL_LIMITS`` (the model's own checks cover the rest)."""
    for key, (low, high) in MODEL_LIMITS.items():
        if key not in config:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CheckpointError(
                meta_path, f"invalid model config in metadata: {key}={value!r} is outside {low}..{high}"
            )


def _check_weights_fit(weights_path: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Compare the tensors with the model ``config`` describes, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(weights_path, f"invalid model config in metadata ({exc})") from exc
    stored = {k: tuple(v.shape) for k, v in state.items()}
    if stored != shapes:
        missing, extra = sorted(set(shapes) - set(stored)), sorted(set(stored) - set(shapes))
        wrong = sorted(k for k in set(shapes) & set(stored) if shapes[k] != stored[k])
        detail = f"missing {missing[:3]}, unexpected {extra[:3]}, other shapes for {wrong[:3]}"
        raise CheckpointError(weights_path, f"weights do not fit the model {config} ({detail})")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` -> (model in eval mode on ``device``, meta).

    Any problem (missing file, foreign or corrupt JSON, truncated or corrupt weights, weights that do not
    belong to this metadata, tensors that do not fit the model) raises CheckpointError naming the file.
    """
    weights_path, _ = checkpoint_paths(path)
    record = read_checkpoint_meta(path)
    if not weights_path.is_file():
        raise CheckpointError(weights_path, "checkpoint weights file not found")
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(weights_path, f"cannot read weights ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != record["weights_sha256"]:
        previous = _previous_path(weights_path)
        older = previous.read_bytes() if previous.is_file() else b""
        if older and hashlib.sha256(older).hexdigest() == record["weights_sha256"]:
            logger.warning(
                "%s: its last save was interrupted; loading the earlier weights its metadata describes (%s)",
                weights_path,
                previous.name,
            )
            data = older
    if hashlib.sha256(data).hexdigest() != record["weights_sha256"]:
        raise CheckpointError(
            weights_path,
            "weights do not match their metadata (checksum differs: truncated, corrupt, or "
            "from another save)",
        )
    try:
        state = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (and others) on corrupt input
        raise CheckpointError(weights_path, f"corrupt safetensors file ({exc})") from exc
    state = strip_wrapper_prefixes(state)
    _check_weights_fit(weights_path, record["model"], state)
    try:
        model = build_model(record["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(weights_path, f"invalid model config in metadata ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        problem = f"weights do not fit the model {record['model']} ({exc})"
        raise CheckpointError(weights_path, problem) from exc
    model.to(device).eval()
    return model, record
