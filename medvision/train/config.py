"""Training settings: one frozen dataclass and the named presets it is built from.

Entry points (CLI, app) pick a preset, apply the user's overrides with ``dataclasses.replace`` (or
``TrainConfig.from_preset(name, **overrides)``) and pass the result down; nothing reads global config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import parse_subset
from medvision.data.regions import TARGETS, target_spec
from medvision.precision import AMP_MODES, DEVICE_CHOICES

# How modality dropout draws the subsets it keeps (medvision.train.modality_dropout).
SUBSET_WEIGHTINGS = ("uniform", "inverse-size")
# The teacher's term in a distilled run's loss (medvision.train.distillation).
DISTILL_LOSSES = ("combined", "bce")

__all__ = ["AMP_MODES", "DEVICES", "PRESETS", "TARGETS", "TrainConfig"]
SCHEDULERS = ("plateau", "cosine")
DEVICES = DEVICE_CHOICES
AUGMENT_LEVELS = ("none", "light", "strong")
IN_MEMORY_MODES = ("auto", "always", "never")
NORMALISATION = "zscore-brain-crop"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does (JSON-serialisable; saved as config.json)."""

    preset: str = "custom"
    # What is learnt.
    target: str = "regions"  # "regions" (WT, TC, ET), "wt" or "necrotic" (the original's label-1 target)
    neighbours: int = 0  # slices each side stacked as extra input channels (2.5-D)
    patch_size: tuple[int, int] = (160, 192)  # every slice is centre-padded/cropped to this (H, W)
    # Model.
    base_filters: int = 32
    depth: int = 4
    dropout: float = 0.2
    attention: bool = True
    # Modality dropout (medvision.train.modality_dropout): None trains on all four modalities only (the
    # network takes image channels alone); a probability p in [0, 1] adds 4 availability planes to the
    # input and drops a random subset of the modalities from a share p of the training slices.
    modality_dropout: float | None = None
    # How the dropped subsets are drawn: "uniform" over the 15, "inverse-size" (1/k for k modalities), or one
    # subset's name ("t1ce"): with modality_dropout 1.0 a network for that input alone.
    modality_subsets: str = "uniform"
    # Data sampling and augmentation.
    # Share of draws from slices that contain tumour (sampling with replacement); None: natural frequency,
    # each slice once per epoch in a shuffled order (the original project's sampling).
    tumour_fraction: float | None = 0.5
    augment: str = "light"  # "none" | "light" | "strong" (mapped to an AugmentConfig)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # A splits file ({"train": [...], "val": [...], "test": [...]}, e.g. one cross-validation fold written
    # by `python -m medvision folds`) fixes the split instead of split_fractions and split_seed.
    split_file: str | None = None
    split_seed: int = 88
    # Optimisation.
    batch_size: int = 16
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the training slices per epoch
    lr: float = 1e-3
    weight_decay: float = 1e-5
    scheduler: str = "cosine"
    warmup_steps: int = 0  # cosine only: linear warm-up from lr/100 over these steps
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    min_lr: float = 1e-6
    early_stop_patience: int | None = None  # epochs without a better val Dice before stopping
    grad_clip: float | None = 1.0
    # Loss (medvision.losses.CombinedLoss weights).
    dice_weight: float = 0.5
    bce_weight: float = 0.3
    focal_weight: float = 0.2
    # Distillation (medvision.train.distillation): a checkpoint (e.g. an ensemble) whose probabilities the
    # run also learns, with this weight against the labels' (1 - weight). None: labels only.
    distill_from: str | None = None
    distill_weight: float = 0.5
    # The teacher's term: "combined", the run's own Dice + BCE + focal loss against the probabilities, or
    # "bce", binary cross-entropy alone (a proper score: lowest where the student's probabilities equal the
    # teacher's; soft Dice against soft targets is lowest for a larger, more certain region).
    distill_loss: str = "combined"
    # Speed.
    # "auto": bf16 on CUDA with bf16, fp16 + GradScaler on other CUDA; on a CPU bf16 only where it is native
    # (AMX/AVX512-BF16), else fp32 (medvision.precision decides for training, evaluation and inference).
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    # CPU threads for torch (None: torch's default, one per core). On a machine shared with other busy
    # processes, OpenMP threads spin-waiting for each other can make training 5-30x slower; 1 avoids it.
    threads: int | None = None
    workers: int = 2  # DataLoader workers when the store does not fit in memory
    in_memory: str = "auto"  # keep the selected slices as tensors on the device when they fit
    memory_budget_gb: float = 4.0  # CPU only: RAM the in-memory path may use
    # Evaluation and logging.
    val_max_slices: int | None = None  # evenly spaced subset of validation slices (None: all brain slices)
    log_every: int = 10  # steps between "step" records in metrics.jsonl
    sample_slices: int = 3  # validation slices drawn into samples/epoch_XXX.png
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples so configs compare equal and stay hashable.
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        object.__setattr__(self, "split_fractions", tuple(float(v) for v in self.split_fractions))
        self._check_choices()
        self._check_sizes()
        self._check_ranges()

    def _check_choices(self) -> None:
        _check_choice("target", self.target, TARGETS)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("augment", self.augment, AUGMENT_LEVELS)
        _check_choice("in_memory", self.in_memory, IN_MEMORY_MODES)
        _check_choice("distill_loss", self.distill_loss, DISTILL_LOSSES)

    def _check_sizes(self) -> None:
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be two positive ints, got {self.patch_size}")
        if any(s % (2**self.depth) for s in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size} must be divisible by 2**depth = {2**self.depth}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split_fractions must be three numbers summing to 1, got {self.split_fractions}"
            )
        for name in ("batch_size", "epochs", "base_filters", "depth", "log_every"):
            _check_positive(name, getattr(self, name))
        for name in ("steps_per_epoch", "val_max_slices", "early_stop_patience", "threads"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))

    def _check_ranges(self) -> None:
        if not self.lr > 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, min_lr and weight_decay >= 0")
        if self.tumour_fraction is not None and not 0.0 <= self.tumour_fraction <= 1.0:
            raise ValueError(f"tumour_fraction must be in [0, 1], got {self.tumour_fraction}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.modality_dropout is not None and not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {self.modality_dropout}")
        if self.modality_subsets not in SUBSET_WEIGHTINGS:
            try:
                parse_subset(self.modality_subsets)
            except ValueError:
                raise ValueError(
                    f"modality_subsets must be one of {SUBSET_WEIGHTINGS} or a subset such as 't1ce' or"
                    f" 'flair+t1ce', got {self.modality_subsets!r}"
                ) from None
        if self.neighbours < 0 or self.workers < 0 or self.warmup_steps < 0 or self.sample_slices < 0:
            raise ValueError("neighbours, workers, warmup_steps and sample_slices must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if not 0 < self.plateau_factor < 1 or self.plateau_patience < 0:
            raise ValueError("plateau_factor must be in (0, 1) and plateau_patience >= 0")
        if self.memory_budget_gb <= 0:
            raise ValueError("memory_budget_gb must be > 0")
        if not 0.0 < self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in (0, 1], got {self.distill_weight}")

    # Derived values -------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        planes = 4 if self.modality_dropout is not None else 0
        return 4 * (1 + 2 * self.neighbours) + planes

    @property
    def modality_input(self) -> str:
        """What the network takes (checkpoint metadata): "availability" planes beside the images when
        trained with modality dropout, else "images" alone."""
        return "availability" if self.modality_dropout is not None else "images"

    @property
    def val_modalities(self) -> tuple[str, ...]:
        """The modalities validation gives the network: a network trained on one subset alone (dropout 1
        with a named subset) is validated on that subset, the input it will get; any other on all four."""
        if self.modality_dropout == 1.0 and self.modality_subsets not in SUBSET_WEIGHTINGS:
            return parse_subset(self.modality_subsets)
        return MODALITIES

    @property
    def out_channels(self) -> int:
        return target_spec(self.target).channels

    @property
    def region_names(self) -> tuple[str, ...]:
        """Names of the output channels, used as keys of the validation metrics."""
        return target_spec(self.target).regions

    def model_config(self) -> dict[str, Any]:
        """Constructor kwargs of medvision.models.AttentionUNet for this run."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_filters": self.base_filters,
            "depth": self.depth,
            "dropout": self.dropout,
            "attention": self.attention,
        }

    # Serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        data["split_fractions"] = list(self.split_fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named preset with some fields replaced (None values are ignored: 'not given')."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(PRESETS[name], **given)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


PRESETS: dict[str, TrainConfig] = {
    # The original project's recipe, for comparison: necrotic-core target on whole 240x240 slices,
    # batch 4, AdamW 1e-4 / 1e-5, ReduceLROnPlateau(0.5, 5, 1e-6), fp16 AMP on GPU, NCHW, early stop 20,
    # natural slice sampling (no tumour oversampling), patient split 70/15/15 with seed 88.
    "seed": TrainConfig(
        preset="seed",
        target="necrotic",
        patch_size=(240, 240),
        base_filters=32,
        depth=4,
        dropout=0.2,
        tumour_fraction=None,
        augment="light",
        batch_size=4,
        epochs=100,
        lr=1e-4,
        weight_decay=1e-5,
        scheduler="plateau",
        early_stop_patience=20,
        grad_clip=None,
        amp="fp16",
        channels_last=False,
        compile=False,
    ),
    # Trains in minutes on 2 CPU cores on the synthetic cohort. amp "auto": bf16 + channels_last is ~2.5x
    # faster than fp32 on CPUs with native bf16 (AMX), but ~9x slower where bf16 is emulated (AVX2 only),
    # so the precision is chosen for the CPU at hand. Random 128x128 crops of the brain-cropped slices,
    # small model, short cosine schedule. Many small steps beat fewer big ones here: on a 20-case cohort
    # 800 steps of 8 reached WT Dice 0.93 (3-D, per test case) where 400 steps of 16 reached 0.85 (val).
    "demo": TrainConfig(
        preset="demo",
        target="regions",
        patch_size=(96, 96),
        base_filters=16,
        depth=4,
        dropout=0.1,
        tumour_fraction=0.5,
        augment="light",
        batch_size=8,
        # 14 x 100 steps of 96x96 crops, 128 validation slices: <= 15 minutes on 2 cores of an AVX2-only CPU
        # in fp32. The earlier 16 x 100 steps of 128x128 with 256 validation slices took 12 minutes on an AMX
        # CPU in bf16, but 0.82 s per step + 16 s per validation there (about 26 minutes); its best epoch
        # was 7 of 16. At 8 epochs the held-out
        # phantoms with small tumours still had many false positives (per-case WT Dice 0.56; 0.75 at 16).
        epochs=14,
        steps_per_epoch=100,
        lr=2e-3,
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_steps=20,
        amp="auto",
        channels_last=True,
        val_max_slices=128,
        log_every=5,
        workers=0,
    ),
    # The shipped default model (checkpoints/train_default.sh): the demo recipe on the real cases, with
    # modality dropout so that any subset of FLAIR/T1/T1ce/T2 can be given. Half of the training slices
    # lose a random subset (all 15 equally likely), so the full set is still seen in 53% of them.
    # 128x128 crops, batch 5 (about the pixels of 8 crops of 96x96): on the same 3 folds the mean of the
    # seven goal Dice cells rose from 0.506 to 0.537 (all four WT 0.684 -> 0.769; recipe_study.sh
    # real_only_patch128, the model card's decision log). 8 x 100 steps: 10-15 minutes per run on 2 AVX2
    # cores in fp32, so a 3-fold cross-validation and the final run fit in an hour on a CPU. On the same
    # folds, 20 x 100 steps (summary 0.534) and one neighbour slice each side (0.486) did not beat it.
    # Nor did 160x160 crops, strong augmentation, tumour oversampling 0.3, lr 1e-3 or 4e-3 or pretraining
    # on the phantoms (2026-12-06, the model card's decision table).
    "real": TrainConfig(
        preset="real",
        target="regions",
        patch_size=(128, 128),
        base_filters=16,
        depth=4,
        dropout=0.1,
        modality_dropout=0.5,
        tumour_fraction=0.5,
        augment="light",
        batch_size=5,
        epochs=8,
        steps_per_epoch=100,
        lr=2e-3,
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_steps=20,
        amp="auto",
        channels_last=True,
        val_max_slices=64,
        log_every=10,
        workers=0,
    ),
    # Our recipe for real BraTS data on a GPU: three regions, bf16 + channels_last + compile, batch 64 on
    # brain-cropped 160x192 slices, cosine lr 1e-3 with warm-up, tumour oversampling, strong augmentation.
    "brats": TrainConfig(
        preset="brats",
        target="regions",
        patch_size=(160, 192),
        neighbours=0,
        base_filters=32,
        depth=4,
        dropout=0.1,
        tumour_fraction=0.5,
        augment="strong",
        batch_size=64,
        epochs=40,
        lr=1e-3,
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_steps=500,
        early_stop_patience=10,
        amp="auto",
        channels_last=True,
        compile=True,
        workers=8,
        log_every=50,
    ),
}
