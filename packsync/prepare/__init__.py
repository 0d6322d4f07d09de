"""Placeholder: the preparation library lands from its own branch."""
