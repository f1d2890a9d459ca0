"""Tests of the generator's ONNX export: signature, parity with torch, metadata, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.common.errors import ConfigError, InputError
from components.export.config import ExportConfig
from components.export.generator import (
    INPUT_NAME,
    METADATA,
    MODEL_ONNX,
    OUTPUT_NAME,
    ExportError,
    LogitsOnly,
    check_parity,
    export_generator,
)
from components.generate.model import build_model, load_model
from components.generate.tokenizer import PAD_ID, TOKENIZER_FILE, VOCAB_FILE, ItemVocab

MAX_LENGTH = 16
CODES = [f"{21000 + i}" for i in range(40)]


def _ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny generator; its weights are random, which parity does not care about."""
    out = tmp_path_factory.mktemp("export") / "generator_model"
    out.mkdir()
    vocab = ItemVocab.build(CODES, ["France", "Spain"], MAX_LENGTH)
    torch.manual_seed(0)
    model = build_model("llama", "tiny", len(vocab), MAX_LENGTH)
    model.save_pretrained(out)
    vocab.save(out)
    return out


@pytest.fixture(scope="module")
def exported(generator_dir: Path) -> tuple[dict, Path]:
    cfg = ExportConfig(parity_batch_sizes=(1, 3, 8), parity_lengths=(1, 7, 40))
    out = generator_dir.parent / "exported" / "generator"
    return export_generator(generator_dir, out, cfg=cfg), out


def test_writes_one_self_contained_onnx_file(exported: tuple[dict, Path]) -> None:
    _, out = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MODEL_ONNX, METADATA, VOCAB_FILE, TOKENIZER_FILE])
    assert (out / MODEL_ONNX).stat().st_size > 100_000  # the weights are inside


def test_parity_figures_cover_every_shape(exported: tuple[dict, Path]) -> None:
    metadata, out = exported
    cases = metadata["parity"]["cases"]
    # 40 is capped at max_length.
    assert {(c["batch_size"], c["seq"]) for c in cases} == {
        (b, s) for b in (1, 3, 8) for s in (1, 7, MAX_LENGTH)
    }
    for case in cases:
        assert case["max_abs_diff"] <= 1e-4
    assert metadata["parity"]["max_abs_diff"] <= 1e-4
    written = json.loads((out / METADATA).read_text())
    assert written["parity"] == metadata["parity"]
    assert written["vocab_size"] == 4 + 2 + len(CODES)
    assert written["max_length"] == MAX_LENGTH
    assert written["opset"] == 18
    digest = hashlib.sha256((out / MODEL_ONNX).read_bytes()).hexdigest()
    assert (written["model_version"], written["onnx_sha256"]) == (digest[:12], digest)
    assert written["inputs"][0]["name"] == INPUT_NAME
    assert written["outputs"][0]["shape"][2] == 4 + 2 + len(CODES)


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (2, 5), (5, 9), (4, MAX_LENGTH)])
def test_output_shapes_follow_the_input(exported: tuple[dict, Path], batch: int, length: int):
    _, out = exported
    session = _ort_session(out / MODEL_ONNX)
    ids = np.random.default_rng(batch).integers(6, 46, size=(batch, length), dtype=np.int64)
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: ids})
    assert logits.shape == (batch, length, 46)
    assert logits.dtype == np.float32


def test_right_padding_leaves_real_positions_unchanged(exported: tuple[dict, Path]) -> None:
    _, out = exported
    session = _ort_session(out / MODEL_ONNX)
    row = np.array([[1, 4, 10, 11, 12]], dtype=np.int64)
    padded = np.full((2, 9), PAD_ID, dtype=np.int64)
    padded[0, :5] = row[0]
    padded[1, :] = [1, 5, 20, 21, 22, 23, 24, 25, 26]
    (alone,) = session.run([OUTPUT_NAME], {INPUT_NAME: row})
    (batched,) = session.run([OUTPUT_NAME], {INPUT_NAME: padded})
    np.testing.assert_allclose(batched[0, :5], alone[0], atol=1e-5)


def test_vocab_is_copied_unchanged(generator_dir: Path, exported: tuple[dict, Path]) -> None:
    _, out = exported
    assert (out / VOCAB_FILE).read_bytes() == (generator_dir / VOCAB_FILE).read_bytes()


def test_parity_beyond_tolerance_is_an_export_error(
    generator_dir: Path, exported: tuple[dict, Path]
) -> None:
    _, out = exported
    vocab = ItemVocab.load(generator_dir)
    records = [vocab.encode("France", CODES[:5]), vocab.encode("Spain", CODES[5:20])]
    wrapper = LogitsOnly(load_model(generator_dir))
    # float32 kernels of ORT and torch differ by ~1e-7, so a tolerance of 1e-12 cannot hold.
    with pytest.raises(ExportError, match=r"parity_atol=1e-12: batch 2 x seq 7"):
        check_parity(
            wrapper,
            out / MODEL_ONNX,
            records,
            batch_sizes=(2,),
            lengths=(7,),
            max_length=MAX_LENGTH,
            atol=1e-12,
        )


def test_missing_generator_dir_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing"):
        export_generator(tmp_path / "nope", tmp_path / "g", cfg=ExportConfig())


def test_vocab_disagreeing_with_model_is_an_input_error(
    generator_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "generator_model"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((generator_dir / name).read_bytes())
    ItemVocab.build(CODES[:10], ["France", "Spain"], MAX_LENGTH).save(broken)
    with pytest.raises(InputError, match="vocab_size=46"):
        export_generator(broken, tmp_path / "g", cfg=ExportConfig())


def test_empty_parity_shapes_are_a_config_error(generator_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="parity_batch_sizes"):
        export_generator(generator_dir, tmp_path / "g", cfg=ExportConfig(parity_batch_sizes=()))


def test_parity_runs_on_given_real_sequences(generator_dir: Path, tmp_path: Path) -> None:
    cfg = ExportConfig(parity_batch_sizes=(2,), parity_lengths=(5,))
    real = [CODES[:6], CODES[3:5], ["NOT-IN-CATALOGUE"]]
    metadata = export_generator(generator_dir, tmp_path / "g", cfg=cfg, real_sequences=real)
    assert metadata["parity"]["inputs"] == "real training sequences"
    assert metadata["parity"]["max_abs_diff"] <= 1e-4
    # With nothing usable given, the check falls back to the model's own samples.
    fallback = export_generator(
        generator_dir, tmp_path / "f", cfg=cfg, real_sequences=[["NOT-IN-CATALOGUE"]]
    )
    assert fallback["parity"]["inputs"] == "sequences sampled from the model"
