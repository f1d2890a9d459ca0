"""The pipeline's steps, in the order they run. Each is a package under ``components/``."""

STEPS = (
    "ingest",
    "budget_check",
    "generate",
    "fuse",
    "train",
    "dp_audit",
    "export",
    "register_features",
    "deploy",
    "report",
)
