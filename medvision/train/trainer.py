"""The training loop: ``train_step(batch) -> dict``, ``evaluate() -> dict`` and ``fit()``.

Everything around the loop (metrics log, status file, sample images) is a callback (see callbacks.py);
the run directory, locking and failure handling live in run.py. What the trainer itself owns is what
``--resume`` needs to continue exactly: weights, optimizer, grad scaler, scheduler, RNG states and
counters in ``train_state.pt`` (written atomically, loadable with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvision.atomic import atomic_path
from medvision.checkpoint import load_checkpoint, save_checkpoint
from medvision.data.augment import augment_batch
from medvision.data.case import MODALITIES
from medvision.data.dataset import centre_channels, fit_to_patch
from medvision.data.modality_sets import subset_name
from medvision.data.store import SliceStore
from medvision.errors import CheckpointError, MedVisionError
from medvision.inference import (
    InferenceBackend,
    ModelSpec,
    PreparedVolume,
    SegmentationEngine,
    choose_precision,
    final_label,
    label_masks,
)
from medvision.losses import CombinedLoss
from medvision.models import build_model
from medvision.precision import autocast, resolve_device
from medvision.train import distributed as dist_utils
from medvision.train.batches import EpochPlan, augment_config, load_size, make_slices, random_crop
from medvision.train.config import NORMALISATION, TrainConfig
from medvision.train.distillation import Teacher, distillation_term
from medvision.train.distributed import DistContext
from medvision.train.evaluation import given_as
from medvision.train.modality_dropout import drop_modalities
from medvision.train.rundir import STATE_FILE, checkpoint_path, json_safe
from medvision.train.validation import Validation, slice_subset

logger = logging.getLogger(__name__)

STATE_FORMAT = "medvision-train-state"


# Settings helpers --------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(aug_generator: torch.Generator) -> dict[str, Any]:
    """This process's RNG states as tensors/lists/ints only (so torch.load(weights_only=True) reads them)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "augment": aug_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], aug_generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    aug_generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_mismatch(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str | None:
    """A one-line summary of why saved weights ``theirs`` do not fit a model's ``ours``, or None if they fit.

    torch's own load_state_dict message lists every tensor (thousands of characters); a user needs counts
    and one example.
    """
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    different = [k for k in ours if k in theirs and tuple(theirs[k].shape) != tuple(ours[k].shape)]
    if not (missing or unexpected or different):
        return None
    if different:
        key = different[0]
        example = f"{key}: saved {tuple(theirs[key].shape)} vs model {tuple(ours[key].shape)}"
    else:
        example = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
    return (
        f"{len(different)} shapes differ, {len(missing)} missing, {len(unexpected)} unexpected; "
        f"e.g. {example}"
    )


def load_init_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy a checkpoint's weights into ``model`` (fine-tuning); shapes must match exactly."""
    source, meta = load_checkpoint(path)
    theirs = source.state_dict()
    mismatch = weights_mismatch(model.state_dict(), theirs)
    if mismatch:
        raise CheckpointError(
            path,
            f"weights do not fit this model ({mismatch}); checkpoint model {meta['model']} vs this run's "
            f"{getattr(model, 'config', '?')}",
        )
    model.load_state_dict(theirs)
    logger.info("initialised weights from %s", path)
    return meta


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@dataclass
class Progress:
    """Counters that make a run resumable (saved in train_state.pt)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    step_in_epoch: int = 0  # steps of the current (unfinished) epoch already done
    best: float = -math.inf  # best validation mean Dice so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    epoch_loss_sum: float = 0.0
    early_stopped: bool = False
    last_val: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains one AttentionUNet on a prepared store.

    ``splits``: {"train": [...], "val": [...], ...} case ids. ``data_info`` (store path, fingerprint,
    source) and ``splits`` go into every checkpoint's metadata. ``run_dir`` receives checkpoints and
    train_state.pt; callbacks (rank 0 only) receive ``on_fit_start(trainer)``, ``on_epoch_start(trainer)``,
    ``on_step_end(trainer, info)``, ``on_epoch_end(trainer, record)``, ``on_fit_end(trainer, state)``.
    """

    def __init__(
        self,
        config: TrainConfig,
        store_path: str | Path,
        run_dir: str | Path,
        *,
        splits: dict[str, list[str]],
        data_info: dict[str, Any] | None = None,
        ctx: DistContext | None = None,
        callbacks: Sequence[Any] = (),
        resume: bool = False,
        init_from: str | Path | None = None,
    ) -> None:
        self.config = config
        self.store_path = Path(store_path)
        self.run_dir = Path(run_dir)
        self.splits = {k: list(v) for k, v in splits.items()}
        self.data_info = dict(data_info or {"path": str(self.store_path)})
        self.ctx = ctx or DistContext(device=resolve_device(config.device))
        self.device = self.ctx.device
        self.callbacks = list(callbacks) if self.ctx.is_main else []
        self.region_names = config.region_names
        if not self.splits.get("train") or not self.splits.get("val"):
            raise MedVisionError(
                f"{self.store_path}: need at least one training and one validation case "
                f"(split sizes { ({k: len(v) for k, v in self.splits.items()}) })"
            )

        self._configure_torch()
        self.amp_dtype = choose_precision(self.device, config.amp)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16 and not config.channels_last:
            logger.warning("bf16 on CPU is slower than fp32 without channels_last; consider --channels-last")
        self.init_from = str(init_from) if init_from else None
        self._build_model(init_from if not resume else None)  # on resume the saved weights include it
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = CombinedLoss(config.dice_weight, config.bce_weight, config.focal_weight)
        self.teacher = (
            Teacher(config.distill_from, config, self.splits, self.device, self.memory_format)
            if config.distill_from
            else None
        )
        self.augment = augment_config(config.augment) if config.augment != "none" else None
        self.aug_generator = torch.Generator(device=self.device)
        self.aug_generator.manual_seed(config.seed * 1_000_003 + self.ctx.rank)
        self._build_data()
        self.sample_rows = self._pick_sample_rows(config.sample_slices)
        self.engine = self._make_engine()
        self.validation = self._make_validation()
        self.scheduler = self._make_scheduler()
        self.progress = Progress()
        self._stop_requested = False
        if resume:
            self.load_state()

    # Setup helpers ------------------------------------------------------------------------------
    def _configure_torch(self) -> None:
        """Threads, seeds, determinism and the GPU's fast-math switches, before anything is built."""
        config = self.config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed + self.ctx.rank)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _build_model(self, init_from: str | Path | None) -> None:
        """The model (+ optional fine-tuning start), then compile and DDP wrappers around the same
        parameters. Validation and samples use the plain ``self.model`` through the inference engine."""
        self.model = build_model(self.config.model_config())
        if init_from:
            load_init_weights(self.model, init_from)
        self.model.to(self.device, memory_format=self.memory_format)
        self.net: nn.Module = torch.compile(self.model) if self.config.compile else self.model
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=device_ids)

    def _build_data(self) -> None:
        """Training slices with brain in them and the sampling plan; validation slices and their subset."""
        config, world = self.config, self.ctx.world_size
        self.load_size = load_size(self.store_path, config.patch_size, 2**config.depth)
        common = dict(
            target=config.target,
            patch_size=self.load_size,
            neighbours=config.neighbours,
            device=self.device,
            workers=config.workers,
            in_memory=config.in_memory,
            budget_gb=config.memory_budget_gb,
        )
        self.train_slices = make_slices(self.store_path, self.splits["train"], **common)
        self.val_slices = make_slices(self.store_path, self.splits["val"], **common)
        candidates = np.flatnonzero(self.train_slices.brain)
        self.steps_per_epoch = config.steps_per_epoch or max(
            1, math.ceil(len(candidates) / (config.batch_size * world))
        )
        self.plan = EpochPlan(
            candidates,
            self.train_slices.is_tumour,
            batch_size=config.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            tumour_fraction=config.tumour_fraction,
            seed=config.seed,
            rank=self.ctx.rank,
            world_size=world,
        )
        val_rows = np.flatnonzero(self.val_slices.brain)
        if config.val_max_slices and len(val_rows) > config.val_max_slices:
            val_rows = val_rows[np.linspace(0, len(val_rows) - 1, config.val_max_slices).round().astype(int)]
        self.val_rows_all = val_rows

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def _make_scheduler(self) -> Any:
        cfg = self.config
        if cfg.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="max",
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                min_lr=cfg.min_lr,
            )
        total, warmup = self.total_steps, min(cfg.warmup_steps, max(self.total_steps - 1, 0))
        floor = min(cfg.min_lr / cfg.lr, 1.0)

        def factor(step: int) -> float:
            if step < warmup:
                return 0.01 + 0.99 * step / warmup  # linear warm-up from lr/100
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _pick_sample_rows(self, n: int) -> list[int]:
        """Up to n fixed validation slices for the sample images: the largest tumour of each val case."""
        if n == 0 or len(self.val_rows_all) == 0:
            return []
        rows = self.val_rows_all
        cases = np.asarray(self.val_slices.case_id)[rows]
        area = np.asarray(self.val_slices.wt_pixels)[rows].astype(float)
        picked: list[int] = []
        for case in dict.fromkeys(cases):
            idx = np.flatnonzero(cases == case)
            best = idx[np.argmax(area[idx])] if area[idx].max() > 0 else idx[len(idx) // 2]
            picked.append(int(rows[best]))
        if len(picked) < n:  # few val cases: add more slices, spread over the selection
            extra = [int(r) for r in rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]]
            picked += [r for r in extra if r not in picked]
        return picked[:n]

    def autocast(self) -> Any:
        return autocast(self.device, self.amp_dtype)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def request_stop(self) -> None:
        """Finish the current step, checkpoint, and return 'stopped' from fit() (signal-safe)."""
        self._stop_requested = True

    # The loop -----------------------------------------------------------------------------------
    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        """One optimizer step on ``(images, targets)``; returns {"loss" (0-dim tensor), "lr", "slices"}."""
        images, targets = batch
        if images.shape[-2:] != self.config.patch_size:
            images, targets = random_crop(images, targets, self.config.patch_size, self.aug_generator)
        if self.augment is not None:
            images, targets = augment_batch(images, targets, self.augment, self.aug_generator)
        if self.config.modality_dropout is not None:
            images = drop_modalities(
                images, self.config.modality_dropout, self.aug_generator, self.config.modality_subsets
            )
        images = images.contiguous(memory_format=self.memory_format)
        self.net.train()
        with self.autocast():
            logits = self.net(images)
            taught = self.teacher.probabilities(images) if self.teacher is not None else None
        loss = self.loss_fn(logits, targets)
        if taught is not None:
            weight = self.config.distill_weight
            term = distillation_term(logits, taught, self.config.distill_loss, self.loss_fn)
            loss = (1.0 - weight) * loss + weight * term
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        lr = self.lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.config.scheduler == "cosine":
            self.scheduler.step()
        self.progress.step += 1
        self.progress.step_in_epoch += 1
        return {"loss": loss.detach(), "lr": lr, "slices": images.shape[0] * self.ctx.world_size}

    def _make_engine(self) -> SegmentationEngine:
        """The inference engine around the model being trained (plain module: validation slice sizes
        differ from the training crops, which would make a compiled module recompile)."""
        cfg = self.config
        backend = InferenceBackend(self.model, self.device, self.amp_dtype, memory_format=self.memory_format)
        spec = ModelSpec(
            target=cfg.target,
            regions=cfg.region_names,
            neighbours=cfg.neighbours,
            multiple=2**cfg.depth,
            patch_size=cfg.patch_size,
            availability=cfg.modality_dropout is not None,
        )
        return SegmentationEngine(backend, spec, batch_size=max(cfg.batch_size, 8) * 2)

    def _make_validation(self) -> Validation:
        """Validation of every val case; with ``val_max_slices`` only the evenly spaced chosen slices."""
        subset = None
        if self.config.val_max_slices and len(self.val_rows_all) < int(self.val_slices.brain.sum()):
            subset = slice_subset(
                self.val_slices.case_id, self.val_slices.slice_index, self.val_rows_all, self.splits["val"]
            )
        return Validation(
            self.store_path,
            self.splits["val"],
            target=self.config.target,
            slices=subset,
            ctx=self.ctx,
            available=self.config.val_modalities,
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Validation loss and per-region scores of the validation cases, predicted by the inference
        engine exactly as ``evaluate`` predicts them: per-case means (dice, iou, precision, recall,
        specificity, with empty-case counts), pixel-pooled scores, slice means; summed over DDP ranks."""
        self.model.eval()
        return self.validation.run(self.engine, self.loss_fn)

    @torch.no_grad()
    def sample_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(FLAIR (N, H, W), truth (N, T, H, W) bool, prediction (N, T, H, W) bool) of the sample slices,
        the prediction made by the inference engine (brain mask, nested label) like every other."""
        if not self.sample_rows:
            empty = np.zeros((0, *self.load_size))
            return empty, empty[:, None].astype(bool), empty[:, None].astype(bool)
        images, targets = self.val_slices.batch(np.asarray(self.sample_rows))
        flair = images[:, centre_channels(self.config.neighbours)][:, MODALITIES.index("flair")]
        self.model.eval()
        # Several sample slices may come from one case (few validation cases): read and prepare it once.
        case_ids = [self.val_slices.case_id[row] for row in self.sample_rows]
        with SliceStore(self.store_path) as store:
            prepared = {
                c: given_as(self.engine.prepare_stored(store.read_image(c)), self.config.val_modalities)
                for c in dict.fromkeys(case_ids)
            }
        predicted = np.stack(
            [
                self._sample_prediction(prepared[case_id], int(self.val_slices.slice_index[row]))
                for case_id, row in zip(case_ids, self.sample_rows, strict=True)
            ]
        )
        return flair.cpu().numpy(), (targets > 0.5).cpu().numpy(), predicted

    def _sample_prediction(self, prepared: PreparedVolume, k: int) -> np.ndarray:
        label = final_label(self.engine.predict_slice(prepared, k), self.engine.regions)
        return fit_to_patch(label_masks(label, self.engine.regions), self.load_size)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _should_stop(self) -> bool:
        return dist_utils.any_rank(self._stop_requested, self.ctx)

    def fit(self) -> str:
        """Train until the last epoch, early stopping or a stop request -> "finished" or "stopped"."""
        handlers = self._install_signal_handlers()
        try:
            return self._fit()
        finally:
            for signum, previous in handlers.items():
                signal.signal(signum, previous)

    def _fit(self) -> str:
        cfg, p = self.config, self.progress
        self._call("on_fit_start")
        state = "finished"
        while p.epoch < cfg.epochs and not p.early_stopped:
            if self._should_stop():
                state = "stopped"
                break
            epoch = p.epoch + 1
            self._call("on_epoch_start")
            started = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            plan = self.plan.rows(epoch)[p.step_in_epoch :]
            for batch in self.train_slices.iterate(plan):
                info = self.train_step(batch)
                loss_sum += info["loss"].double()
                self._call("on_step_end", info)
                if self._should_stop():
                    state = "stopped"
                    break
            # Same number of steps on every rank (they stop together), so the rank mean is the batch mean.
            p.epoch_loss_sum += float(dist_utils.all_reduce_sum(loss_sum, self.ctx)) / self.ctx.world_size
            if state == "stopped":
                self.save(best=False)
                break
            slices = len(plan) * self.config.batch_size * self.ctx.world_size
            record = self._end_epoch(epoch, time.perf_counter() - started, slices)
            self._call("on_epoch_end", record)
            # Saved after the epoch's record is written: a kill in between resumes from the state before,
            # whose metrics exclude this epoch, and the epoch is done (and recorded) again. Saving first
            # would leave a finished epoch that no metrics record describes.
            self.save(best=record["improved"])
        self._call("on_fit_end", state)
        return state

    def _end_epoch(self, epoch: int, train_time: float, slices: int) -> dict[str, Any]:
        cfg, p = self.config, self.progress
        train_loss = p.epoch_loss_sum / max(p.step_in_epoch, 1)
        result = self.evaluate()
        score = result["val_mean_dice"]
        improved = bool(score > p.best)
        if improved:
            p.best, p.best_epoch, p.bad_epochs = score, epoch, 0
        else:
            p.bad_epochs += 1
        if cfg.scheduler == "plateau":
            self.scheduler.step(score)
        if cfg.early_stop_patience is not None and p.bad_epochs >= cfg.early_stop_patience:
            p.early_stopped = True
            logger.info(
                "early stopping after epoch %d (no better val Dice for %d epochs)", epoch, p.bad_epochs
            )
        p.epoch, p.step_in_epoch, p.epoch_loss_sum, p.last_val = epoch, 0, 0.0, result
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val Dice %s",
            epoch,
            cfg.epochs,
            train_loss,
            result["val_loss"],
            ", ".join(f"{k} {v['dice']:.3f}" for k, v in result["val"].items()),
        )
        return {
            "epoch": epoch,
            "step": p.step,
            "total_steps": self.total_steps,
            "train_loss": train_loss,
            "lr": self.lr,
            **result,
            "best_val_mean_dice": p.best,
            "best_epoch": p.best_epoch,
            "improved": improved,
            "early_stopped": p.early_stopped,
            "epoch_time_s": train_time,
            "slices_per_s": slices / max(train_time, 1e-9),
        }

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM (and a first Ctrl-C) -> stop after the current step; only possible in the main thread."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self._stop_requested:
                raise KeyboardInterrupt  # second Ctrl-C: give up at once
            logger.info("received %s: stopping after the current step", signal.Signals(signum).name)
            self._stop_requested = True

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
        return previous

    # Checkpoints ---------------------------------------------------------------------------------
    def checkpoint_meta(self, kind: str) -> dict[str, Any]:
        cfg, p = self.config, self.progress
        return json_safe(
            {
                "kind": kind,
                "target": cfg.target,
                "regions": list(self.region_names),
                "preset": cfg.preset,
                "modalities": list(MODALITIES),
                "modality_input": cfg.modality_input,
                "neighbours": cfg.neighbours,
                "patch_size": list(cfg.patch_size),
                "normalisation": NORMALISATION,
                "data": self.data_info,
                "split": {"seed": cfg.split_seed, "fractions": list(cfg.split_fractions), **self.splits},
                "epoch": p.epoch,
                "step": p.step,
                "total_steps": self.total_steps,
                "val": p.last_val.get("val"),
                "val_loss": p.last_val.get("val_loss"),
                "val_mean_dice": p.last_val.get("val_mean_dice"),
                "val_modalities": subset_name(cfg.val_modalities),
                "best_val_mean_dice": p.best if math.isfinite(p.best) else None,
                "best_epoch": p.best_epoch or None,
                "train_config": cfg.to_dict(),
                "init_from": self.init_from,
                "distilled_from": self.teacher.describe() if self.teacher is not None else None,
                "created": time.time(),
            }
        )

    def state_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng,
            "world_size": self.ctx.world_size,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def save(self, best: bool) -> None:
        """Write checkpoints/last (+ best) and train_state.pt (rank 0); every rank must call this."""
        rng = [rng_state(self.aug_generator)]
        if self.ctx.distributed:
            gathered: list[Any] = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.ctx.is_main:
            save_checkpoint(checkpoint_path(self.run_dir, "last"), self.model, self.checkpoint_meta("last"))
            if best:
                best_path = checkpoint_path(self.run_dir, "best")
                save_checkpoint(best_path, self.model, self.checkpoint_meta("best"))
            # Weights travel inside the state too, so resuming depends on this one atomically written file.
            _atomic_torch_save(self.state_dict(rng), self.run_dir / STATE_FILE)
        dist_utils.barrier(self.ctx)

    def load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            raise MedVisionError(f"{path}: no training state to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a corrupt or foreign file
            raise CheckpointError(path, f"cannot read training state ({error})") from error
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(path, "not a MedVision training state")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise MedVisionError(
                f"{path}: saved run has {state['steps_per_epoch']} steps per epoch, this one "
                f"{self.steps_per_epoch}; resume with the same data, batch size and number of processes"
            )
        mismatch = weights_mismatch(self.model.state_dict(), state["model"])
        if mismatch:
            raise CheckpointError(path, f"saved weights do not fit the configured model ({mismatch})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        rngs = state["rng"]
        if state["world_size"] == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank], self.aug_generator)
        else:
            logger.warning(
                "resuming with %d processes instead of %d: random streams are re-seeded",
                self.ctx.world_size,
                state["world_size"],
            )
            seed_everything(self.config.seed + self.ctx.rank + self.progress.step)
        logger.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch, self.progress.step)
