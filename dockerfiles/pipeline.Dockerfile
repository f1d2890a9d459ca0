# syntax=docker/dockerfile:1.7
# The image every pipeline step runs in: torch (CPU or CUDA), kfp, opacus, transformers, feast,
# onnx and the project code with its bundled data sample.
#
#   docker build -f dockerfiles/pipeline.Dockerfile -t ghcr.io/recsynth/recsynth-pipeline:0.1.0 .
#   docker build -f dockerfiles/pipeline.Dockerfile --build-arg TORCH_VARIANT=cu130 \
#       -t ghcr.io/recsynth/recsynth-pipeline:0.1.0-cu130 .
FROM python:3.11.11-slim-bookworm

# cpu, or a CUDA build such as cu130 (the suffix of PyTorch's wheel index).
ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    HOME=/home/recsynth

RUN groupadd --gid 10001 recsynth \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/recsynth recsynth

WORKDIR /app

# torch first and alone, from the index of the chosen build: a loose torch requirement resolved
# from PyPI would pull a multi-GB CUDA build into the CPU image.
COPY requirements/torch.txt requirements/torch.txt
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        -r requirements/torch.txt

COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

# Code last, so a code change rebuilds only these layers.
COPY pyproject.toml ./
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/
COPY feature_repo/ feature_repo/
COPY configs/ configs/
COPY data/ data/

USER 10001:10001
CMD ["python", "-m", "pipelines.local", "--help"]
