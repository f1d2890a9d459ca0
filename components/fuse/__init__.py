"""The fuse step."""
