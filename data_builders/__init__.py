"""Privileged datasets from the datasets users already have, plus the offline synthetic scenes."""
