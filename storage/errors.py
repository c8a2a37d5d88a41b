"""Errors raised for bad input on disk. Each message names the file or field and the value."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file or folder that cannot be used (unreadable image, mask of the wrong size, empty class)."""


class StoreError(ValueError):
    """A run store that is inconsistent or was written by an incompatible configuration."""
