"""Errors of the gan layer that users can fix; their one-line messages say how."""

from __future__ import annotations


class AcceleratorError(ValueError):
    """The asked-for device is unknown or absent; the one-line message says what to do."""
