"""The container image each pipeline step runs in, pinned by tag.

The Dockerfiles under ``dockerfiles/`` build these images; the tag moves with the project
version, never ``latest``, so a compiled pipeline names exactly the code it runs. Local runs
(``pipelines.local``) ignore the image and run each step in a subprocess of the current
environment.
"""

from __future__ import annotations

from components.common.steps import STEPS

VERSION = "0.1.0"
REGISTRY = "ghcr.io/recsynth"

# One image carries the whole `components` package and its pinned dependencies (torch, opacus,
# transformers, feast, onnx): every step imports its logic from it.
PIPELINE_IMAGE = f"{REGISTRY}/recsynth-pipeline:{VERSION}"
# The serving image (no torch) that the deploy step names in the InferenceService manifests.
SERVING_IMAGE = f"{REGISTRY}/recsynth-serving:{VERSION}"

STEP_IMAGES: dict[str, str] = {step: PIPELINE_IMAGE for step in STEPS}


def image_for(step: str) -> str:
    """The pinned image of ``step``.

    Raises:
        KeyError: ``step`` is not one of the pipeline steps.
    """
    try:
        return STEP_IMAGES[step]
    except KeyError:
        raise KeyError(f"unknown step {step!r}; known steps: {sorted(STEP_IMAGES)}") from None
