"""Tests of the generator's ONNX export: both graphs' signatures, parity with torch, metadata,
the cache graph against the full graph, bad input."""

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
    KV_ONNX,
    MASK_NAME,
    METADATA,
    MODEL_ONNX,
    OUTPUT_NAME,
    ExportError,
    LogitsOnly,
    _condition_records,
    _sampled_records,
    check_cached_parity,
    check_parity,
    empty_past,
    export_generator,
    past_names,
    present_names,
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


REAL = [CODES[:6], CODES[3:5], ["NOT-IN-CATALOGUE"], CODES[10:30]]


@pytest.fixture(scope="module")
def exported(generator_dir: Path) -> tuple[dict, Path]:
    cfg = ExportConfig(parity_batch_sizes=(1, 3, 8), parity_lengths=(1, 7, 40))
    out = generator_dir.parent / "exported" / "generator"
    return export_generator(generator_dir, out, cfg=cfg, real_sequences=REAL), out


def test_writes_two_self_contained_onnx_files(exported: tuple[dict, Path]) -> None:
    _, out = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MODEL_ONNX, KV_ONNX, METADATA, VOCAB_FILE, TOKENIZER_FILE])
    # the weights are inside each graph
    assert (out / MODEL_ONNX).stat().st_size > 100_000
    assert (out / KV_ONNX).stat().st_size > 100_000


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
    kv_digest = hashlib.sha256((out / KV_ONNX).read_bytes()).hexdigest()
    assert written["onnx_sha256"] == digest
    assert written["kv_cache"]["onnx_sha256"] == kv_digest
    both = hashlib.sha256(f"{digest}:{kv_digest}".encode()).hexdigest()[:12]
    assert written["model_version"] == both
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


def test_parity_runs_on_the_given_real_sequences(exported: tuple[dict, Path]) -> None:
    metadata, _ = exported
    assert metadata["parity"]["inputs"] == "real training sequences"
    assert metadata["kv_cache"]["parity"]["inputs"] == "real training sequences"


def test_records_cycle_through_the_conditions_and_drop_empty_ones() -> None:
    vocab = ItemVocab.build(CODES, ["France", "Spain"], MAX_LENGTH, months=True, n_price_bands=3)
    records = _condition_records(vocab, REAL)
    # the third sequence has no catalogue item, so it is no record
    assert len(records) == 3
    heads = [r[:5] for r in records]
    assert heads[0] == [1, vocab.countries["France"], vocab.month_id(1), vocab.band_id(0)] + [
        vocab.item_id(CODES[0])
    ]
    assert heads[1][:4] == [1, vocab.countries["Spain"], vocab.month_id(2), vocab.band_id(1)]
    assert heads[2][:4] == [1, vocab.countries["Spain"], vocab.month_id(4), vocab.band_id(0)]
    assert all(len(r) <= MAX_LENGTH and r[-1] == 2 for r in records)
    assert _condition_records(vocab, [["NOT-IN-CATALOGUE"]]) == []


def test_without_real_sequences_the_model_samples_the_records(generator_dir: Path) -> None:
    vocab = ItemVocab.load(generator_dir)
    records = _sampled_records(load_model(generator_dir), vocab, 4)
    assert 1 <= len(records) <= 4
    for r in records:
        assert r[0] == 1 and r[1] in vocab.countries.values() and r[-1] == 2
        assert all(vocab.is_item(t) for t in r[2:-1])


def test_cache_graph_signature_and_geometry(exported: tuple[dict, Path]) -> None:
    metadata, _ = exported
    kv = metadata["kv_cache"]
    assert (kv["n_layers"], kv["kv_heads"], kv["head_dim"]) == (1, 2, 16)  # tiny: 32 / 2 heads
    assert [i["name"] for i in kv["inputs"]] == [INPUT_NAME, MASK_NAME, *past_names(1)]
    assert [o["name"] for o in kv["outputs"]] == [OUTPUT_NAME, *present_names(1)]
    assert kv["inputs"][2]["shape"][1:4:2] == [2, 16]
    assert all(isinstance(d, str) for d in kv["inputs"][1]["shape"])  # both mask axes dynamic
    assert kv["outputs"][0]["shape"][1] == 4 + 2 + len(CODES)
    assert {(c["batch_size"], c["seq"]) for c in kv["parity"]["cases"]} == {
        (b, s) for b in (1, 3, 8) for s in (1, 7, MAX_LENGTH)
    }
    assert kv["parity"]["max_abs_diff"] <= 1e-4


def test_cache_graph_prefill_and_decode_equal_the_full_graph(exported: tuple[dict, Path]) -> None:
    """Left-padded prefill, then decode steps, against the no-cache graph in ORT alone."""
    _, out = exported
    full, kv = _ort_session(out / MODEL_ONNX), _ort_session(out / KV_ONNX)
    rows = [[1, 4, 10, 11, 12, 13, 14, 15], [1, 5, 30, 31, 32, 33, 34, 35]]
    prompt_len = [5, 2]  # row 1 is left-padded by 3 in the prefill
    (want,) = full.run([OUTPUT_NAME], {INPUT_NAME: np.array(rows, np.int64)})
    width = max(prompt_len)
    ids = np.full((2, width), PAD_ID, np.int64)
    mask = np.zeros((2, 1 + width), np.int64)
    for i, p in enumerate(prompt_len):
        ids[i, width - p :] = rows[i][:p]
        mask[i, 1 + width - p :] = 1
    feed = {
        INPUT_NAME: ids,
        MASK_NAME: mask,
        **dict(zip(past_names(1), empty_past(2, (1, 2, 16)), strict=True)),
    }
    logits, *presents = kv.run(None, feed)
    for i, p in enumerate(prompt_len):
        np.testing.assert_allclose(logits[i], want[i, p - 1], atol=1e-5)
    for step in range(3):
        tok = np.array([[rows[i][p + step]] for i, p in enumerate(prompt_len)], np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        feed = {INPUT_NAME: tok, MASK_NAME: mask, **dict(zip(past_names(1), presents, strict=True))}
        logits, *presents = kv.run(None, feed)
        assert presents[0].shape == (2, 2, 1 + width + step + 1, 16)
        for i, p in enumerate(prompt_len):
            np.testing.assert_allclose(logits[i], want[i, p + step], atol=1e-5)


def test_cache_parity_beyond_tolerance_is_an_export_error(
    generator_dir: Path, exported: tuple[dict, Path]
) -> None:
    _, out = exported
    vocab = ItemVocab.load(generator_dir)
    records = [vocab.encode("France", CODES[:5]), vocab.encode("Spain", CODES[5:20])]
    wrapper = LogitsOnly(load_model(generator_dir))
    with pytest.raises(ExportError, match=r"cache graph and torch disagree .*batch 2 x seq 7"):
        check_cached_parity(
            wrapper,
            out / KV_ONNX,
            records,
            shape=(1, 2, 16),
            batch_sizes=(2,),
            lengths=(7,),
            max_length=MAX_LENGTH,
            atol=1e-12,
        )


def test_served_greedy_sessions_of_a_vocabulary_without_conditions_equal_torch(
    generator_dir: Path, exported: tuple[dict, Path]
) -> None:
    """The exported cache graph of an older vocabulary (no month, no band) through serving."""
    import asyncio

    from transformers import LogitsProcessor, LogitsProcessorList

    from serving.generator import GeneratorModel

    _, out = exported
    model = GeneratorModel(out, require_gpu=False)
    model.load()
    assert model.decoding == "kv-cache"
    vocab = ItemVocab.load(generator_dir)
    lm = load_model(generator_dir).float().eval()

    class Rules(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            ok = torch.zeros_like(scores, dtype=torch.bool)
            ok[:, vocab.first_item_id :] = True
            ok &= ~torch.zeros_like(ok).scatter_(1, input_ids, True)
            ok[:, 2] = (input_ids >= vocab.first_item_id).any(dim=1)
            return scores.masked_fill(~ok, float("-inf"))

    cases = [("France", [], 8), ("Spain", CODES[:3], 6), ("France", CODES[5:12], 5)]
    body = {
        "instances": [
            {"country": c, "prefix": p, "max_items": k, "temperature": 0} for c, p, k in cases
        ]
    }

    async def call() -> dict:
        return model.postprocess(await model.predict(await model.preprocess(body)))

    predictions = asyncio.run(call())["predictions"]
    for (country, prefix, k), pred in zip(cases, predictions, strict=True):
        prompt = torch.tensor([vocab.encode(country, prefix)[:-1]])
        with torch.inference_mode():
            ids = lm.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=k,
                logits_processor=LogitsProcessorList([Rules()]),
                eos_token_id=2,
                pad_token_id=PAD_ID,
                do_sample=False,
            )[0, prompt.shape[1] :].tolist()
        ids = ids[: ids.index(2)] if 2 in ids else ids
        (session,) = pred["sessions"]
        assert session == {"country": country, "items": prefix + [vocab.tokens[i] for i in ids]}
