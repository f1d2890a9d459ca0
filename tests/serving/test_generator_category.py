"""The served generator with category tokens: ONNX against torch, V1 and V2, bad categories.

One tiny Llama-style generator with month, band and category tokens is exported once per
module, its output layer scaled up so that greedy continuations are long and distinct.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from kserve.protocol.infer_type import InferInput, InferRequest
from transformers import LogitsProcessor, LogitsProcessorList

from components.export.config import ExportConfig
from components.export.generator import export_generator
from components.generate.model import build_model, load_model
from components.generate.tokenizer import EOS_ID, PAD_ID, ItemVocab
from serving.errors import BadRequest
from serving.generator import GeneratorModel, Vocab

CODES = [f"{41000 + i}" for i in range(30)]
COUNTRIES = ["France", "Spain"]
CATEGORIES = ["17", "4", "64"]
MAX_LENGTH = 16
LOGIT_SCALE = 25.0


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gencat")
    model_dir = root / "generator_model"
    model_dir.mkdir()
    vocab = ItemVocab.build(
        CODES, COUNTRIES, MAX_LENGTH, months=True, n_price_bands=2, categories=CATEGORIES
    )
    torch.manual_seed(5)
    lm = build_model("llama", "tiny", len(vocab), MAX_LENGTH)
    with torch.no_grad():
        lm.lm_head.weight.mul_(LOGIT_SCALE)
    lm.save_pretrained(model_dir)
    vocab.save(model_dir)
    cfg = ExportConfig(parity_batch_sizes=(1, 3), parity_lengths=(7, MAX_LENGTH))
    export_generator(model_dir, root / "exported", cfg=cfg)
    return model_dir, root / "exported"


@pytest.fixture(scope="module")
def model(dirs: tuple[Path, Path]) -> GeneratorModel:
    served = GeneratorModel(dirs[1], require_gpu=False)
    served.load()
    return served


def served(model: GeneratorModel, instances: list[dict]) -> list[list[dict]]:
    async def call() -> dict:
        payload = await model.preprocess({"instances": instances})
        return model.postprocess(await model.predict(payload))

    return [p["sessions"] for p in asyncio.run(call())["predictions"]]


def test_vocab_reads_the_categories(dirs: tuple[Path, Path]) -> None:
    vocab = Vocab.read(dirs[1] / "vocab.json")
    # specials 0-3, two countries, twelve months, two bands, then the sorted names
    assert vocab.categories == {"17": 20, "4": 21, "64": 22}
    assert vocab.frame_tokens == 6
    assert vocab.max_session_items == MAX_LENGTH - 6


def test_greedy_with_a_category_equals_torch_generate(dirs: tuple[Path, Path], model) -> None:
    lm = load_model(dirs[0]).float().eval()
    vocab = ItemVocab.load(dirs[0])
    cases = [("France", 3, 0, "17", 0), ("Spain", 11, 1, "64", 2), ("France", 7, 1, "4", 1)]
    instances = [
        {
            "country": country,
            "month": month,
            "price_band": band,
            "category": category,
            "prefix": CODES[:n_prefix],
            "temperature": 0,
            "max_items": 8,
        }
        for country, month, band, category, n_prefix in cases
    ]
    got = served(model, instances)
    first = vocab.first_item_id
    for (country, month, band, category, n_prefix), (session,) in zip(cases, got, strict=True):
        prompt = vocab.encode(
            country, CODES[:n_prefix], month=month, price_band=band, category=category
        )[:-1]
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,  # max_items counts the sampled items, not the prefix
                do_sample=False,
                logits_processor=LogitsProcessorList([_ItemsOnce(first)]),
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
            )
        tail = out[0, len(prompt) :].tolist()
        tail = tail[: tail.index(EOS_ID)] if EOS_ID in tail else tail
        assert session["items"] == CODES[:n_prefix] + [vocab.tokens[t] for t in tail]
        assert (session["country"], session["category"]) == (country, category)


class _ItemsOnce(LogitsProcessor):
    """The serving masks for torch generate: items only, each once, eos after one item."""

    def __init__(self, first: int) -> None:
        self.first = first

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ok = torch.zeros_like(scores, dtype=torch.bool)
        ok[:, self.first :] = True
        ok &= ~torch.zeros_like(ok).scatter_(1, input_ids, True)
        ok[:, EOS_ID] = (input_ids >= self.first).any(dim=1)
        return scores.masked_fill(~ok, float("-inf"))


def test_sampled_category_comes_from_its_group(model) -> None:
    (free,) = served(model, [{"n": 32, "seed": 3, "temperature": 3.0}])
    assert {s["category"] for s in free} <= set(CATEGORIES)
    assert len({s["category"] for s in free}) > 1
    for s in free:
        assert set(s["items"]) <= set(CODES) and s["items"]


def test_v2_takes_and_returns_the_category(model) -> None:
    request = InferRequest(
        model_name="generator",
        infer_inputs=[
            InferInput(name="category", shape=[1], datatype="BYTES", data=["64"]),
            InferInput(name="n", shape=[1], datatype="INT32", data=[3]),
            InferInput(name="seed", shape=[1], datatype="INT64", data=[1]),
        ],
    )

    async def call():
        payload = await model.preprocess(request)
        return model.postprocess(await model.predict(payload))

    response = asyncio.run(call())
    outputs = {o.name: o for o in response.outputs}
    assert set(outputs) == {"items", "length", "country", "month", "price_band", "category"}
    assert outputs["category"].datatype == "BYTES"
    assert [str(c) for c in outputs["category"].data] == ["64", "64", "64"]
    assert "category" in [i["name"] for i in model.get_input_types()]
    assert "category" in [o["name"] for o in model.get_output_types()]


@pytest.mark.parametrize("value", ["99", "", 17, None])
def test_unknown_category_is_a_400_listing_the_allowed(model, value) -> None:
    with pytest.raises(BadRequest) as info:
        asyncio.run(model.preprocess({"instances": [{"n": 1}, {"category": value}]}))
    assert info.value.status == 400
    assert info.value.field == "instances[1].category"
    assert info.value.allowed == "17, 4, 64"


def test_category_on_a_generator_without_categories_is_a_400(tmp_path: Path) -> None:
    import serving_builders as b

    plain = GeneratorModel(b.build_generator(tmp_path / "gen"), require_gpu=False)
    plain.load()
    assert plain.vocab.categories is None
    with pytest.raises(BadRequest, match="trained without category") as info:
        asyncio.run(plain.preprocess({"instances": [{"category": "17"}]}))
    assert info.value.field == "instances[0].category"
    assert "category" not in [i["name"] for i in plain.get_input_types()]
