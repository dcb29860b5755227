"""Errors shared by the dataset writer and reader (this module imports nothing heavy)."""


class DatasetError(ValueError):
    """A dataset version that is missing or unreadable; the message says what to run."""


class DiskFullError(OSError):
    """A write failed for want of space (or quota, or a file-size limit); names the file."""
