"""The dp_audit step."""
