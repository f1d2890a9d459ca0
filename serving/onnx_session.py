"""The ONNX Runtime session both models run on, with an explicit provider list and a check.

onnxruntime-gpu lists CUDAExecutionProvider even when the CUDA and cuDNN libraries are missing;
it then runs on CPU and only writes an error to stderr, even when CUDA alone was asked for. So the
providers are chosen explicitly and ``session.get_providers()`` is checked after creation: when a
GPU is required and CUDA is not active, loading fails with a message naming what is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from serving.errors import ModelLoadError

logger = logging.getLogger(__name__)

REQUIRE_GPU_ENV = "RECSYNTH_REQUIRE_GPU"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def gpu_required_from_env() -> bool:
    """Whether ``RECSYNTH_REQUIRE_GPU`` asks for a GPU ("1", "true", "yes"; anything else no)."""
    return os.environ.get(REQUIRE_GPU_ENV, "").strip().lower() in {"1", "true", "yes"}


def providers_for(require_gpu: bool) -> list[str]:
    """The provider list passed to ORT: CUDA first (CPU kept for ops CUDA lacks) or CPU alone."""
    return [CUDA, CPU] if require_gpu else [CPU]


def create_session(
    model_path: Path, *, require_gpu: bool | None = None, intra_op_threads: int | None = None
) -> ort.InferenceSession:
    """Open an ONNX model and check that the providers asked for are the ones running it.

    Args:
        model_path: the ``model.onnx`` file (weights inside it).
        require_gpu: demand CUDAExecutionProvider; ``None`` reads ``RECSYNTH_REQUIRE_GPU``.
        intra_op_threads: ORT intra-op threads; ``None`` lets ORT choose.

    Returns:
        The session, with ``get_providers()`` logged at INFO.

    Raises:
        ModelLoadError: the file is missing or not a valid model, or a GPU is required and CUDA
            is not active (names the missing provider and what to install).
    """
    if require_gpu is None:
        require_gpu = gpu_required_from_env()
    if not model_path.is_file():
        raise ModelLoadError(f"ONNX model file not found: {model_path}")

    wanted = providers_for(require_gpu)
    available = ort.get_available_providers()
    if require_gpu and CUDA not in available:
        raise ModelLoadError(
            f"a GPU is required ({REQUIRE_GPU_ENV}=1) but this onnxruntime build offers only "
            f"{available}; install onnxruntime-gpu (not onnxruntime)"
        )

    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
        if intra_op_threads == 1:
            # Concurrency comes from requests in the executor's threads; a spinning intra-op pool
            # per call would only fight them for the cores.
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=wanted)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all RuntimeError
        raise ModelLoadError(f"onnxruntime could not open {model_path}: {exc}") from exc

    active = session.get_providers()
    logger.info("ORT session for %s: asked %s, active %s", model_path.name, wanted, active)
    if require_gpu and CUDA not in active:
        raise ModelLoadError(
            f"a GPU is required ({REQUIRE_GPU_ENV}=1) but {CUDA} is not active for "
            f"{model_path.name} (active: {active}); the CUDA 13 runtime and cuDNN 9 libraries "
            "that onnxruntime-gpu needs are missing or no GPU is visible"
        )
    return session


def check_io(
    session: ort.InferenceSession,
    *,
    inputs: dict[str, str],
    outputs: dict[str, str],
    model_path: Path,
) -> None:
    """Check that a session has the named inputs/outputs with the element types given.

    Args:
        session: the ORT session.
        inputs: input name -> ORT type string, e.g. ``{"item_ids": "tensor(int64)"}``.
        outputs: output name -> ORT type string.
        model_path: for the message.

    Raises:
        ModelLoadError: a name is missing or has another type.
    """
    for kind, wanted, got in (
        ("input", inputs, {i.name: i.type for i in session.get_inputs()}),
        ("output", outputs, {o.name: o.type for o in session.get_outputs()}),
    ):
        for name, type_ in wanted.items():
            if name not in got:
                raise ModelLoadError(
                    f"{model_path} has no {kind} named {name!r} (it has {sorted(got)})"
                )
            if got[name] != type_:
                raise ModelLoadError(
                    f"{model_path} {kind} {name!r} is {got[name]}, expected {type_}"
                )
