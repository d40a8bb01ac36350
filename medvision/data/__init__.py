"""Data: readers, the Case type, synthetic cohort, prepared store, dataset and splits."""
