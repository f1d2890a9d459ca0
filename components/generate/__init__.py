"""The generate step."""
