"""Segmentation networks (configured by constructor arguments, no global config)."""

from medvision.models.attention_unet import CONFIG_KEYS, AttentionUNet, build_model, mc_dropout_mode
from medvision.models.ensemble import ModelEnsemble

__all__ = ["CONFIG_KEYS", "AttentionUNet", "ModelEnsemble", "build_model", "mc_dropout_mode"]
