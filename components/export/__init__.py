"""The export step."""
