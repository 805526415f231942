"""Siaga edge agent: runs on the Raspberry Pi in an office's server room."""

__version__ = "0.1.0"
