"""recsynth pipeline steps: one package per step, plus the shared core in ``common``."""
