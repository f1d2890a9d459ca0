# syntax=docker/dockerfile:1.7
# The serving image: `python -m serving` with onnxruntime-gpu, kserve and feast, and no torch. It
# runs every serving container: the generator's predictor, and the recommender's transformer
# (`--role transformer`, Feast and ranking) and predictor (`--role predictor`, ONNX).
# onnxruntime-gpu 1.31 is a CUDA 13 / cuDNN 9 build, so the base is NVIDIA's CUDA 13 runtime
# with cuDNN 9; on a node without a GPU the server falls back to CPU unless
# RECSYNTH_REQUIRE_GPU=1, which the GPU manifests set.
#
#   docker build -f dockerfiles/serving.Dockerfile -t ghcr.io/recsynth/recsynth-serving:0.1.0 .
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HOME=/tmp

# Ubuntu 24.04's Python (3.12); the venv keeps pip away from the system packages.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

RUN groupadd --gid 10001 recsynth \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp recsynth

WORKDIR /app

COPY requirements/serving.txt requirements/serving.txt
RUN pip install -r requirements/serving.txt \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the serving image" >&2; exit 1; fi

COPY serving/ serving/

USER 10001:10001
EXPOSE 8080
# The ServingRuntime (predictors) and the InferenceService (the transformer) supply the arguments.
ENTRYPOINT ["python", "-m", "serving"]
