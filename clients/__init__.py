"""Flower ClientApp of fl-dp: local normalization, error feedback, compression and noise."""
