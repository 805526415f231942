"""Siaga central coordinator (fleet view, incidents, commands). Built in later issues."""
