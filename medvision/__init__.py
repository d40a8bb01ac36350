"""MedVision: brain-tumour segmentation on multi-modal MRI (research demo, not for clinical use)."""

__version__ = "0.1.0"
