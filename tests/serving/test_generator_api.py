"""The generator over HTTP: sessions of real stock codes, sampling options, V2."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import serving_builders as b

pytestmark = pytest.mark.integration


def generate(servers, instances: list[dict]) -> list[dict]:
    r = httpx.post(
        f"{servers.generator.base}/v1/models/generator:predict",
        json={"instances": instances},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_sessions_are_distinct_real_codes_after_the_prefix(servers):
    (pred,) = generate(servers, [{"prefix": ["85123A"], "n": 3, "max_items": 10, "seed": 7}])
    sessions = pred["sessions"]
    assert len(sessions) == 3
    assert pred["model_version"] == "gen-test-1"
    assert pred["variant"] == "stable"
    for s in sessions:
        assert s["items"][0] == "85123A"
        assert set(s["items"]) <= set(b.GEN_CODES)
        assert len(s["items"]) == len(set(s["items"]))
        # eos may come right after the prefix (the session already holds an item)
        assert 1 <= len(s["items"]) <= 11
        assert s["country"] in b.COUNTRIES


def test_same_seed_same_sessions(servers):
    inst = {"n": 4, "max_items": 6, "seed": 123, "temperature": 1.5}
    first, again = generate(servers, [inst, inst])
    assert first == again
    assert first == generate(servers, [inst])[0]


def reference_greedy(servers, country: str, prefix: list[str], max_items: int) -> list[str]:
    """Greedy decoding written out independently, over the same ONNX file."""
    vocab = b.generator_vocab()
    tokens = vocab["tokens"]
    first = vocab["first_item_id"]
    session = ort.InferenceSession(
        str(servers.gen_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    seq = [vocab["bos_id"], vocab["countries"][country]] + [tokens.index(p) for p in prefix]
    out = list(prefix)
    for _ in range(max_items):
        logits = session.run(["logits"], {"input_ids": np.array([seq], np.int64)})[0][0, -1]
        candidates = [i for i in range(first, len(tokens)) if tokens[i] not in out]
        if out:
            candidates.append(vocab["eos_id"])
        best = max(candidates, key=lambda i: (logits[i], -i))
        if best == vocab["eos_id"]:
            break
        out.append(tokens[best])
        seq.append(best)
    return out


def test_greedy_matches_reference_and_top_k_1(servers):
    greedy, top1 = generate(
        servers,
        [
            {"temperature": 0, "n": 2, "country": "Germany", "prefix": ["22752"], "max_items": 8},
            {"top_k": 1, "n": 2, "country": "Germany", "prefix": ["22752"], "max_items": 8},
        ],
    )
    want = reference_greedy(servers, "Germany", ["22752"], 8)
    assert [s["items"] for s in greedy["sessions"]] == [want, want]
    assert [s["country"] for s in greedy["sessions"]] == ["Germany", "Germany"]
    assert [s["items"] for s in top1["sessions"]] == [want, want]


def test_max_items_and_country_are_honoured(servers):
    (pred,) = generate(
        servers, [{"n": 8, "max_items": 2, "country": "France", "seed": 1, "top_p": 0.9}]
    )
    for s in pred["sessions"]:
        assert 1 <= len(s["items"]) <= 2
        assert s["country"] == "France"


def test_longest_allowed_session(servers):
    # max_length 16 leaves 13 items between bos, country and eos: 12 of prefix + 1 sampled.
    prefix = b.GEN_CODES[:12]
    (full, free) = generate(
        servers,
        [{"prefix": prefix, "max_items": 1, "seed": 3}, {"max_items": 13, "seed": 3, "n": 2}],
    )
    assert 12 <= len(full["sessions"][0]["items"]) <= 13
    assert full["sessions"][0]["items"][:12] == prefix
    assert all(1 <= len(s["items"]) <= 13 for s in free["sessions"])


def test_v2_generate(servers):
    body = {
        "inputs": [
            {"name": "prefix", "shape": [1], "datatype": "BYTES", "data": ["85123A"]},
            {"name": "n", "shape": [1], "datatype": "INT32", "data": [3]},
            {"name": "max_items", "shape": [1], "datatype": "INT32", "data": [5]},
            {"name": "temperature", "shape": [1], "datatype": "FP32", "data": [0.8]},
            {"name": "seed", "shape": [1], "datatype": "INT64", "data": [5]},
            {"name": "country", "shape": [1], "datatype": "BYTES", "data": ["France"]},
        ]
    }
    r = httpx.post(f"{servers.generator.base}/v2/models/generator/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    n, width = out["items"]["shape"]
    assert n == 3
    lengths = out["length"]["data"]
    assert max(lengths) == width
    rows = [out["items"]["data"][i * width : (i + 1) * width] for i in range(n)]
    for row, length in zip(rows, lengths, strict=True):
        assert row[0] == "85123A"
        assert set(row[:length]) <= set(b.GEN_CODES)
        assert row[length:] == [""] * (width - length)
    assert out["country"]["data"] == ["France"] * 3
    assert r.json()["model_version"] == "gen-test-1"
