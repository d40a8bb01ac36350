"""Training: settings (config), the loop (trainer), the run directory (rundir) and DDP helpers.

Import the pieces from their modules (``medvision.train.trainer.Trainer``,
``medvision.train.run.run_training``); this package imports nothing heavy so ``rundir`` stays cheap
for the app to poll.
"""

from medvision.train.config import PRESETS, TrainConfig

__all__ = ["PRESETS", "TrainConfig"]
