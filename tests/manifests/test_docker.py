"""The Dockerfiles, read as text (no Docker engine here): pinned bases, non-root, sources exist.

Also checks that the serving image's requirements carry no torch and use base.txt's pins, and
that the uid the images run as is the one the manifests demand.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from components.deploy import manifests

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "dockerfiles"
DOCKERFILES = sorted(p.name for p in DOCKER.glob("*.Dockerfile"))


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = (DOCKER / name).read_text(encoding="utf-8")
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_both_images_exist() -> None:
    assert DOCKERFILES == ["pipeline.Dockerfile", "serving.Dockerfile"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_by_tag(name: str) -> None:
    froms = [args.split()[0] for word, args in instructions(name) if word == "FROM"]
    assert froms
    for image in froms:
        assert "$" not in image, f"{name}: FROM {image} is not a literal, pinned image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: FROM {image}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_runs_as_the_non_root_uid_the_manifests_expect(name: str) -> None:
    users = [args for word, args in instructions(name) if word == "USER"]
    assert users, f"{name} has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and uid != "0", f"{name}: USER {users[-1]} must be a numeric non-root uid"
    assert int(uid) == manifests.CONTAINER_SECURITY.run_as_user


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copy_source_exists_and_survives_the_dockerignore(name: str) -> None:
    ignore = DOCKER / f"{name}.dockerignore"
    patterns = [
        ln.strip()
        for ln in ignore.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    sources = []
    for word, args in instructions(name):
        if word in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            assert "--from" not in args, f"{name}: no multi-stage copies expected"
            sources += parts[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"{name}: COPY source {src} does not exist"
        assert not _ignored(src.rstrip("/"), patterns), (
            f"{name}: {src} is excluded by {ignore.name}"
        )


def _ignored(path: str, patterns: list[str]) -> bool:
    # .dockerignore semantics for the patterns these files use: the last matching line wins.
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if pat == "**" or fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


def test_serving_image_installs_no_torch_and_the_gpu_runtime() -> None:
    pins = requirement_pins(ROOT / "requirements" / "serving.txt")
    assert {"kserve", "feast", "onnxruntime-gpu"} <= set(pins)
    for banned in ("torch", "onnxruntime", "transformers", "opacus", "kfp", "optimum"):
        assert banned not in pins
    text = (DOCKER / "serving.Dockerfile").read_text()
    installs = [args for word, args in instructions("serving.Dockerfile") if word == "RUN"]
    assert all("requirements/torch.txt" not in r and "pip install torch" not in r for r in installs)
    assert (
        "FROM nvidia/cuda:13." in text and "cudnn" in text
    )  # onnxruntime-gpu 1.31: CUDA 13, cuDNN 9


def test_serving_pins_match_base_pins() -> None:
    base = requirement_pins(ROOT / "requirements" / "base.txt")
    serving = requirement_pins(ROOT / "requirements" / "serving.txt")
    assert {k: v for k, v in serving.items() if base.get(k) != v} == {}
    assert set(serving) <= set(base)


def test_pipeline_image_takes_torch_from_the_chosen_build_index_before_the_rest() -> None:
    steps = instructions("pipeline.Dockerfile")
    args = {a.split("=")[0]: a.split("=", 1)[1] for w, a in steps if w == "ARG" and "=" in a}
    assert args["TORCH_VARIANT"] == "cpu"
    runs = [a for w, a in steps if w == "RUN" and "pip install" in a]
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in runs[0]
    assert "requirements/torch.txt" in runs[0]
    assert "requirements/base.txt" in runs[1]
