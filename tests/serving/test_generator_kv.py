"""The generator's key/value-cache decoding against torch: greedy equality, sampled distributions,
cache against no cache, conditioning, batching and bad parameters.

One tiny Llama-style generator with month and price band tokens is exported once per module. Its
output layer is scaled up so that its next-token distributions are far from uniform: a sampler
with a wrong temperature, top-k or top-p then produces visibly different frequencies.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import LogitsProcessor, LogitsProcessorList

from components.export.config import ExportConfig
from components.export.generator import export_generator
from components.generate.model import build_model, load_model
from components.generate.tokenizer import EOS_ID, PAD_ID, ItemVocab
from serving.errors import BadRequest
from serving.generator import (
    CachedDecoder,
    FullDecoder,
    GeneratorModel,
    Job,
    Vocab,
    generate,
)

CODES = [f"{22000 + i}" for i in range(40)]
COUNTRIES = ["France", "Germany", "Spain"]
MAX_LENGTH = 20
BANDS = 4
LOGIT_SCALE = 25.0


def _build(out: Path, architecture: str) -> Path:
    """A saved tiny generator with peaked next-token distributions, and its ONNX export."""
    model_dir = out / "generator_model"
    model_dir.mkdir(parents=True)
    vocab = ItemVocab.build(CODES, COUNTRIES, MAX_LENGTH, months=True, n_price_bands=BANDS)
    torch.manual_seed(3)
    lm = build_model(architecture, "tiny", len(vocab), MAX_LENGTH)
    head = lm.lm_head if hasattr(lm, "lm_head") else lm.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(LOGIT_SCALE)
    lm.save_pretrained(model_dir)
    vocab.save(model_dir)
    cfg = ExportConfig(parity_batch_sizes=(1, 4), parity_lengths=(6, MAX_LENGTH))
    export_generator(model_dir, out / "exported", cfg=cfg)
    return model_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kv")
    return _build(root, "llama"), root / "exported"


@pytest.fixture(scope="module")
def lm(dirs: tuple[Path, Path]) -> torch.nn.Module:
    return load_model(dirs[0]).float().eval()


@pytest.fixture(scope="module")
def vocab(dirs: tuple[Path, Path]) -> ItemVocab:
    return ItemVocab.load(dirs[0])


@pytest.fixture(scope="module")
def kv_model(dirs: tuple[Path, Path]) -> GeneratorModel:
    model = GeneratorModel(dirs[1], require_gpu=False, batch_wait_ms=20)
    model.load()
    return model


@pytest.fixture(scope="module")
def full_model(dirs: tuple[Path, Path]) -> GeneratorModel:
    model = GeneratorModel(dirs[1], require_gpu=False, use_cache=False)
    model.load()
    return model


class SessionRules(LogitsProcessor):
    """The serving sampler's masks for torch generate: items only, each once, eos after one."""

    def __init__(self, first_item_id: int) -> None:
        self.first = first_item_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ok = torch.zeros_like(scores, dtype=torch.bool)
        ok[:, self.first :] = True
        used = torch.zeros_like(ok).scatter_(1, input_ids, True)
        ok &= ~used
        ok[:, EOS_ID] = (input_ids >= self.first).any(dim=1)
        return scores.masked_fill(~ok, float("-inf"))


def torch_generate(
    lm: torch.nn.Module, vocab: ItemVocab, prompt: list[int], rows: int, max_items: int, **kw
) -> list[list[str]]:
    """Stock codes of ``rows`` continuations of ``prompt`` by transformers' generate."""
    ids = torch.tensor([prompt] * rows)
    with torch.inference_mode():
        out = lm.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_items,
            logits_processor=LogitsProcessorList([SessionRules(vocab.first_item_id)]),
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            **kw,
        )
    sessions = []
    for row in out[:, len(prompt) :].tolist():
        row = row[: row.index(EOS_ID)] if EOS_ID in row else row
        sessions.append([vocab.tokens[t] for t in row])
    return sessions


def served(model: GeneratorModel, instances: list[dict]) -> list[list[dict]]:
    async def call() -> dict:
        payload = await model.preprocess({"instances": instances})
        return model.postprocess(await model.predict(payload))

    return [p["sessions"] for p in asyncio.run(call())["predictions"]]


# (country, month, band, prefix length, max_items): short and long prompts, batched together.
PROMPTS = [
    ("France", 1, 0, 0, 6),
    ("Germany", 12, 3, 2, 9),
    ("Spain", 7, 1, 5, 3),
    ("France", 4, 2, 10, 5),
    ("Germany", 9, 0, 1, 14),
]


def test_greedy_equals_torch_generate_on_mixed_prompts(lm, vocab, kv_model):
    instances = [
        {
            "country": country,
            "month": month,
            "price_band": band,
            "prefix": CODES[7 : 7 + n_prefix],
            "max_items": max_items,
            "temperature": 0,
            "n": 2,
        }
        for country, month, band, n_prefix, max_items in PROMPTS
    ]
    got = served(kv_model, instances)
    for (country, month, band, n_prefix, max_items), sessions in zip(PROMPTS, got, strict=True):
        prefix = CODES[7 : 7 + n_prefix]
        prompt = vocab.encode(country, prefix, month=month, price_band=band)[:-1]
        (want,) = torch_generate(lm, vocab, prompt, 1, max_items, do_sample=False)
        for session in sessions:
            assert session["items"] == prefix + want
            assert (session["country"], session["month"], session["price_band"]) == (
                country,
                month,
                band,
            )
    # at least one greedy continuation is long, so the decode steps (not only prefill) matter
    assert max(len(s[0]["items"]) - p[3] for s, p in zip(got, PROMPTS, strict=True)) >= 3


@pytest.mark.parametrize("opts", [{"temperature": 0}, {"seed": 11}, {"seed": 5, "top_k": 4}])
def test_cache_decoding_equals_the_full_graph(kv_model, full_model, opts):
    instances = [
        {"n": 6, "max_items": 12, **opts},
        {"n": 3, "country": "Spain", "prefix": CODES[:3], **opts},
        {"n": 2, "month": 3, "max_items": 1, **opts},
    ]
    assert kv_model.decoding == "kv-cache" and full_model.decoding == "full-sequence"
    assert served(kv_model, instances) == served(full_model, instances)


def test_cache_and_full_decoders_give_the_same_logits(kv_model, full_model, vocab):
    prompts = [[1, 4, 7, 19, 24], [1, 5], [1, 6, 8, 20, 30, 31, 32]]
    cached, full = kv_model.decoder(), full_model.decoder()
    assert isinstance(cached, CachedDecoder) and isinstance(full, FullDecoder)
    np.testing.assert_allclose(cached.prefill(prompts), full.prefill(prompts), atol=1e-4)
    rows = np.array([0, 1, 2])
    for step in range(6):
        if step == 3:  # the middle row finishes: both decoders drop it
            rows = np.array([0, 2])
            cached.keep(np.array([0, 2]))
            full.keep(np.array([0, 2]))
        tokens = np.array([30 + step, 40 + step, 50 + step])[rows]
        np.testing.assert_allclose(cached.step(tokens), full.step(tokens), atol=1e-4)


def _first_item_probs(lm, vocab, prompt, temperature: float) -> np.ndarray:
    """torch's distribution of the first sampled item after ``prompt`` (eos not yet allowed)."""
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    logits[: vocab.first_item_id] = float("-inf")
    for t in prompt:
        logits[t] = float("-inf")
    return torch.softmax(logits / temperature, dim=-1).numpy()


def _chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Goodness of fit of ``counts`` to ``probs``, rare cells pooled (expected count < 5)."""
    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(stats.chisquare(obs[keep], exp[keep]).pvalue)


def _sample_first_items(model, vocab, prompt_job: dict, n: int, seed: int) -> np.ndarray:
    job = Job(
        prefix=[vocab.item_id(c) for c in prompt_job.get("prefix", [])],
        n=n,
        max_items=1,
        temperature=prompt_job["temperature"],
        top_k=prompt_job.get("top_k"),
        top_p=prompt_job.get("top_p"),
        seed=seed,
        country=vocab.countries["Germany"],
        month=vocab.month_id(6),
        price_band=vocab.band_id(1),
    )
    (sessions,) = generate(model.decoder(), model.vocab, [job])
    n_prefix = len(job.prefix)
    ids = [
        vocab.item_id(s["items"][-1]) if len(s["items"]) > n_prefix else EOS_ID for s in sessions
    ]
    return np.bincount(ids, minlength=len(vocab))


def test_sampled_first_items_follow_torch_softmax_and_fail_on_a_wrong_temperature(
    lm, vocab, kv_model
):
    prompt = vocab.encode("Germany", [], month=6, price_band=1)[:-1]
    counts = _sample_first_items(kv_model, vocab, {"temperature": 0.7}, 4000, seed=1)
    right = _first_item_probs(lm, vocab, prompt, 0.7)
    # The distribution is peaked enough for temperature to matter a lot.
    assert right.max() > 0.2
    assert _chi_square_p(counts, right) > 1e-3
    # The same counts are refused against temperature 1.0 and 0.5: the test can fail.
    for wrong in (1.0, 0.5):
        assert _chi_square_p(counts, _first_item_probs(lm, vocab, prompt, wrong)) < 1e-6


def test_top_k_and_top_p_follow_transformers_warpers(lm, vocab, kv_model):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    prompt = vocab.encode("Germany", [CODES[2]], month=6, price_band=1)[:-1]
    opts = {"temperature": 1.3, "top_k": 6, "top_p": 0.8, "prefix": [CODES[2]]}
    counts = _sample_first_items(kv_model, vocab, opts, 4000, seed=2)
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([prompt])).logits[:, -1].double()
    logits = SessionRules(vocab.first_item_id)(torch.tensor([prompt]), logits) / 1.3
    logits = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(6)(None, logits))
    want = torch.softmax(logits[0], dim=-1).numpy()
    assert counts[want == 0].sum() == 0  # nothing outside the kept set is ever drawn
    assert (want > 0).sum() > 1
    assert _chi_square_p(counts, want) > 1e-3


def test_second_step_distribution_matches_torch_sampling(lm, vocab, kv_model):
    """Two-sample test on the item drawn at the second decode step (after a sampled first)."""
    prompt = vocab.encode("France", [], month=11, price_band=2)[:-1]
    torch.manual_seed(0)
    theirs = torch_generate(lm, vocab, prompt, 3000, 2, do_sample=True, temperature=0.8, top_k=0)
    job = Job(
        prefix=[],
        n=3000,
        max_items=2,
        temperature=0.8,
        top_k=None,
        top_p=None,
        seed=4,
        country=vocab.countries["France"],
        month=vocab.month_id(11),
        price_band=vocab.band_id(2),
    )
    (ours,) = generate(kv_model.decoder(), kv_model.vocab, [job])

    def second(sessions: list[list[str]]) -> np.ndarray:
        ids = [vocab.item_id(s[1]) if len(s) > 1 else EOS_ID for s in sessions]
        return np.bincount(ids, minlength=len(vocab))

    a, b = second(theirs), second([s["items"] for s in ours])
    cells = (a + b) >= 10
    table = np.array([np.append(a[cells], a[~cells].sum()), np.append(b[cells], b[~cells].sum())])
    table = table[:, table.sum(axis=0) > 0]
    assert table.shape[1] >= 5
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_conditions_are_forced_or_sampled_from_their_group(kv_model):
    (given, free) = served(
        kv_model,
        [
            {"n": 8, "seed": 1, "month": 12, "price_band": 3, "country": "Spain"},
            {"n": 32, "seed": 2, "temperature": 2.0},
        ],
    )
    assert {(s["country"], s["month"], s["price_band"]) for s in given} == {("Spain", 12, 3)}
    for s in free:
        assert s["country"] in COUNTRIES
        assert 1 <= s["month"] <= 12
        assert 0 <= s["price_band"] < BANDS
        assert 1 <= len(s["items"]) <= 20
        assert set(s["items"]) <= set(CODES)
        assert len(set(s["items"])) == len(s["items"])
    # sampled conditions vary at a high temperature
    assert len({s["month"] for s in free}) > 1


def test_degenerate_sampling_values(kv_model):
    base = {"n": 2, "country": "France", "month": 5, "price_band": 0, "max_items": 8}
    greedy, cold, top1, narrow = served(
        kv_model,
        [
            {**base, "temperature": 0},
            {**base, "temperature": 1e-30, "seed": 1},  # as good as greedy, and no overflow
            {**base, "top_k": 1, "seed": 2},
            {**base, "top_p": 1e-9, "seed": 3},  # the best token alone
        ],
    )
    assert greedy == cold == top1 == narrow
    (one,) = served(kv_model, [{**base, "max_items": 1, "seed": 4, "n": 5}])
    assert all(len(s["items"]) == 1 for s in one)


def test_seeded_sessions_do_not_depend_on_the_batch(kv_model):
    inst = {"n": 5, "seed": 77, "temperature": 1.2, "max_items": 10}
    alone = served(kv_model, [inst])[0]
    crowd = served(kv_model, [{"n": 7, "seed": 1}, inst, {"prefix": CODES[:9], "n": 3}])
    assert crowd[1] == alone


def test_concurrent_requests_share_one_decode_batch(kv_model):
    bodies = [{"instances": [{"n": 3, "seed": i, "max_items": 6}]} for i in range(8)]

    async def one(body: dict) -> list:
        payload = await kv_model.preprocess(body)
        return kv_model.postprocess(await kv_model.predict(payload))["predictions"]

    async def together() -> list:
        return await asyncio.gather(*(one(b) for b in bodies))

    before = kv_model._batcher.batches
    answers = asyncio.run(together())
    assert kv_model._batcher.batches - before == 1  # 20 ms wait gathers all eight
    for body, answer in zip(bodies, answers, strict=True):
        assert answer[0]["sessions"] == served(kv_model, body["instances"])[0]


@pytest.mark.parametrize(
    ("inst", "field"),
    [
        ({"month": 13}, "instances[0].month"),
        ({"month": 0}, "instances[0].month"),
        ({"month": "12"}, "instances[0].month"),
        ({"month": 6.0}, "instances[0].month"),
        ({"price_band": BANDS}, "instances[0].price_band"),
        ({"price_band": -1}, "instances[0].price_band"),
        ({"price_band": True}, "instances[0].price_band"),
        ({"prefix": [CODES[1], CODES[2], CODES[1]]}, "instances[0].prefix[2]"),
        ({"prefix": CODES[:15]}, "instances[0].prefix"),  # 20 - 5 frame tokens leave 15 items
        ({"prefix": CODES[:5], "max_items": 11}, "instances[0].max_items"),
        ({"temperature": float("nan")}, "instances[0].temperature"),
        ({"temperature": float("inf")}, "instances[0].temperature"),
        ({"top_k": len(CODES) + 1}, "instances[0].top_k"),
        ({"top_p": -0.1}, "instances[0].top_p"),
        ({"seed": 2**32}, "instances[0].seed"),
        ({"n": 10**9}, "instances[0].n"),
    ],
)
def test_bad_parameters_are_400s_naming_the_field(kv_model, inst, field):
    with pytest.raises(BadRequest) as info:
        asyncio.run(kv_model.preprocess({"instances": [inst]}))
    assert info.value.status == 400
    assert info.value.field == field


def test_conditions_on_a_vocabulary_without_them_are_400s(tmp_path):
    import serving_builders as b

    model = GeneratorModel(b.build_generator(tmp_path / "gen"), require_gpu=False)
    model.load()
    assert model.vocab.months is None and model.vocab.price_bands is None
    for key, value in (("month", 12), ("price_band", 0)):
        with pytest.raises(BadRequest, match="trained without") as info:
            asyncio.run(model.preprocess({"instances": [{key: value}]}))
        assert info.value.field == f"instances[0].{key}"
    (sessions,) = served(model, [{"n": 2, "seed": 0, "max_items": 3}])
    assert all(set(s) == {"country", "items"} for s in sessions)
    assert [o["name"] for o in model.get_output_types()] == ["items", "length", "country"]


def test_vocab_reads_the_condition_groups(dirs):
    vocab = Vocab.read(dirs[1] / "vocab.json")
    assert sorted(vocab.months) == list(range(1, 13))
    assert sorted(vocab.price_bands) == list(range(BANDS))
    assert vocab.frame_tokens == 5
    assert vocab.max_session_items == MAX_LENGTH - 5


@pytest.mark.slow
def test_gpt2_greedy_equals_torch_generate(tmp_path):
    model_dir = _build(tmp_path, "gpt2")
    lm, vocab = load_model(model_dir).float().eval(), ItemVocab.load(model_dir)
    model = GeneratorModel(tmp_path / "exported", require_gpu=False)
    model.load()
    prompts = PROMPTS[:3]
    instances = [
        {"country": c, "month": m, "price_band": b, "prefix": CODES[:p], "max_items": k}
        | {"temperature": 0}
        for c, m, b, p, k in prompts
    ]
    for (c, m, b, p, k), sessions in zip(prompts, served(model, instances), strict=True):
        prompt = vocab.encode(c, CODES[:p], month=m, price_band=b)[:-1]
        (want,) = torch_generate(lm, vocab, prompt, 1, k, do_sample=False)
        assert sessions[0]["items"] == CODES[:p] + want


def _genx_port() -> int:
    """A free port of this engineer's range (19000-19499)."""
    import socket

    for port in range(19000 + (os.getpid() % 40) * 10, 19500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 19000-19499")


@pytest.mark.integration
def test_served_over_http_with_conditions_and_concurrent_clients(dirs, tmp_path):
    import httpx
    from serving_procs import start_server, stop_server, wait_ready

    server = start_server(
        "generator",
        ["--model-dir", str(dirs[1]), "--host", "127.0.0.1"],
        tmp_path / "generator.log",
        port=_genx_port(),
        env={"RECSYNTH_GENERATOR_BATCH_WAIT_MS": "5"},
    )
    try:
        wait_ready(server)
        assert "kv-cache decoding" in server.log_tail(200)
        v2 = {
            "inputs": [
                {"name": "n", "shape": [1], "datatype": "INT32", "data": [3]},
                {"name": "month", "shape": [1], "datatype": "INT32", "data": [12]},
                {"name": "price_band", "shape": [1], "datatype": "INT32", "data": [2]},
                {"name": "seed", "shape": [1], "datatype": "INT64", "data": [8]},
            ]
        }
        r = httpx.post(f"{server.base}/v2/models/generator/infer", json=v2, timeout=60)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["month"]["data"] == [12, 12, 12]
        assert out["price_band"]["data"] == [2, 2, 2]
        assert set(out["country"]["data"]) <= set(COUNTRIES)

        bad = httpx.post(
            f"{server.base}/v1/models/generator:predict",
            json={"instances": [{"month": 13}]},
            timeout=60,
        )
        assert bad.status_code == 400
        assert bad.json()["field"] == "instances[0].month"

        url = f"{server.base}/v1/models/generator:predict"
        bodies = [{"instances": [{"n": 2, "seed": i, "max_items": 8}]} for i in range(12)]
        alone = [httpx.post(url, json=b, timeout=60).json() for b in bodies]

        async def together() -> list[dict]:
            async with httpx.AsyncClient(timeout=60) as client:
                answers = await asyncio.gather(*(client.post(url, json=b) for b in bodies))
            return [a.json() for a in answers]

        assert asyncio.run(together()) == alone
    finally:
        stop_server(server)
