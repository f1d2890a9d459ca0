"""In-process checks of the pieces: sampling, validation, errors, ORT session, model loading."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
import serving_builders as b

from serving.binding import check_host
from serving.errors import BadRequest, ModelLoadError, NotReady, PayloadTooLarge
from serving.generator import GeneratorModel, Vocab, _mask_bias, sample_rows, sample_tokens
from serving.onnx_session import CPU, check_io, create_session
from serving.recommender import Catalogue, RecommenderModel
from serving.server import _field_from_loc
from serving.validation import TensorSpec, get_float, get_int, instances_of, v2_tensors

HAS_GPU = shutil.which("nvidia-smi") is not None


# sampling -----------------------------------------------------------------------------------


def test_sampling_never_picks_a_masked_token():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 30)) * 5
    allowed = rng.random((64, 30)) < 0.2
    allowed[:, 7] = True
    for opts in ({}, {"top_k": 3}, {"top_p": 0.5}, {"top_k": 2, "top_p": 0.9}):
        picks = sample_tokens(
            logits,
            allowed,
            temperature=1.3,
            top_k=opts.get("top_k"),
            top_p=opts.get("top_p"),
            rng=rng,
        )
        assert allowed[np.arange(64), picks].all()


def test_greedy_and_top_k_1_pick_the_best_allowed_token():
    logits = np.array([[5.0, 1.0, 3.0, 2.0], [0.0, 9.0, 9.0, 1.0]])
    allowed = np.array([[False, True, True, True], [True, True, True, True]])
    rng = np.random.default_rng(0)
    greedy = sample_tokens(logits, allowed, temperature=0.0, top_k=None, top_p=None, rng=rng)
    top1 = sample_tokens(logits, allowed, temperature=1.0, top_k=1, top_p=None, rng=rng)
    assert greedy.tolist() == [2, 1]  # ties go to the lower id
    assert top1[0] == 2
    assert top1[1] in (1, 2)  # a tie at the cut keeps both


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_masking_picks_what_np_where_masking_picks(dtype):
    """The bit-built -inf bias (and float32 greedy) equals masking with np.where, draw for draw."""
    rng = np.random.default_rng(3)
    rows, vocab = 48, 257
    logits = rng.normal(size=(rows, vocab)).astype(dtype) * 4
    logits[:, 10] = logits[:, 11] = 50.0  # a tie on the best token: the lower id wins
    allowed = rng.random((rows, vocab)) < 0.3
    allowed[: rows // 2, 10], allowed[:, 11] = False, True  # half see only the later twin
    allowed[rows // 2 :, 10] = True
    allowed[:, 200] = True
    assert (_mask_bias(allowed) == np.where(allowed, 0.0, -np.inf)).all()
    temperature = np.where(np.arange(rows) % 3 == 0, 0.0, 0.8)  # greedy and sampled rows
    u = rng.random(rows)
    picks = sample_rows(
        logits,
        allowed,
        temperature=temperature,
        top_k=np.zeros(rows, np.int64),
        top_p=np.ones(rows),
        u=u,
    )
    z = np.where(allowed, logits.astype(np.float64), -np.inf)
    best = np.argmax(z, axis=1)
    greedy = temperature == 0.0
    assert (picks[greedy] == best[greedy]).all()
    every_row_greedy = sample_rows(  # the float32 shortcut taken when no row samples
        logits,
        allowed,
        temperature=np.zeros(rows),
        top_k=np.zeros(rows, np.int64),
        top_p=np.ones(rows),
        u=u,
    )
    assert (every_row_greedy == best).all()
    assert (best[: rows // 2] == 11).all() and (best[rows // 2 :] == 10).all()
    p = np.exp((z - z.max(axis=1, keepdims=True)) / 0.8)
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    want = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
    assert (picks[~greedy] == want[~greedy]).all()
    assert allowed[np.arange(rows), picks].all()


def test_sampling_follows_the_softmax():
    logits = np.tile(np.log([0.7, 0.2, 0.1]), (20000, 1))
    allowed = np.ones_like(logits, dtype=bool)
    picks = sample_tokens(
        logits, allowed, temperature=1.0, top_k=None, top_p=None, rng=np.random.default_rng(1)
    )
    freq = np.bincount(picks, minlength=3) / len(picks)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.015)
    nucleus = sample_tokens(
        logits, allowed, temperature=1.0, top_k=None, top_p=0.8, rng=np.random.default_rng(1)
    )
    freq = np.bincount(nucleus, minlength=3) / len(nucleus)
    np.testing.assert_allclose(freq, [0.7 / 0.9, 0.2 / 0.9, 0.0], atol=0.015)


# validation and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 2.0, "2", None, [2]])
def test_get_int_refuses_non_integers(value):
    with pytest.raises(BadRequest, match=r"instances\[0\]\.k: must be an integer"):
        get_int({"k": value}, "k", "instances[0]", lo=1, hi=5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_get_float_refuses_non_finite(value):
    with pytest.raises(BadRequest, match="must be finite"):
        get_float({"t": value}, "t", "inputs", lo=0.0, hi=10.0)


def test_instances_limit_is_413_and_names_the_field():
    with pytest.raises(PayloadTooLarge) as info:
        instances_of({"instances": [{}] * 5}, max_instances=4)
    assert info.value.status == 413
    assert info.value.to_dict()["field"] == "instances"


def test_v2_shape_must_match_the_data():
    class Tensor:
        name, datatype, shape, data = "k", "INT32", [2, 2], [1, 2, 3]

    with pytest.raises(BadRequest, match=r"inputs\[0\]\.data: data has 3 elements"):
        v2_tensors([Tensor()], {"k": TensorSpec("INT32")})


def test_error_value_is_cut_short():
    error = BadRequest("bad", field="f", value="x" * 500)
    assert len(error.to_dict()["value"]) <= 80
    assert error.to_dict()["status"] == 400


def test_pydantic_locations_become_field_paths():
    assert _field_from_loc(("body", "InferenceRequest", "inputs", 0, "shape")) == "inputs[0].shape"
    assert _field_from_loc(("body",)) == "body"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_wildcard_hosts_are_refused(host, monkeypatch):
    monkeypatch.delenv("RECSYNTH_ALLOW_ALL_INTERFACES", raising=False)
    with pytest.raises(ValueError, match="every interface"):
        check_host(host)


def test_loopback_host_is_kept():
    assert check_host("127.0.0.1") == "127.0.0.1"


# ORT sessions -------------------------------------------------------------------------------


def test_cpu_session_runs_on_cpu_only(tmp_path):
    model_dir = b.build_recommender(tmp_path / "rec")
    session = create_session(model_dir / "model.onnx", require_gpu=False)
    assert session.get_providers() == [CPU]


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: CUDA may well be active")
def test_required_gpu_without_cuda_is_a_load_error(tmp_path):
    model_dir = b.build_recommender(tmp_path / "rec")
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider is not active"):
        create_session(model_dir / "model.onnx", require_gpu=True)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")
def test_required_gpu_with_cuda_runs_on_cuda(tmp_path):
    model_dir = b.build_recommender(tmp_path / "rec")
    session = create_session(model_dir / "model.onnx", require_gpu=True)
    assert session.get_providers()[0] == "CUDAExecutionProvider"


def test_check_io_names_the_missing_input(tmp_path):
    model_dir = b.build_recommender(tmp_path / "rec")
    session = create_session(model_dir / "model.onnx", require_gpu=False)
    with pytest.raises(ModelLoadError, match="no input named 'input_ids'"):
        check_io(
            session,
            inputs={"input_ids": "tensor(int64)"},
            outputs={},
            model_path=model_dir / "model.onnx",
        )


def test_missing_onnx_file_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        create_session(tmp_path / "model.onnx", require_gpu=False)


# model loading and direct calls -------------------------------------------------------------


def test_catalogue_with_a_repeated_index_is_refused(tmp_path):
    model_dir = b.build_recommender(tmp_path / "rec")
    raw = json.loads((model_dir / "catalogue.json").read_text())
    raw["items"][1]["index"] = 1
    (model_dir / "catalogue.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="repeated"):
        Catalogue.read(model_dir / "catalogue.json")


def test_catalogue_that_does_not_match_the_model_is_refused(tmp_path):
    model_dir = b.build_recommender(tmp_path / "rec")
    raw = json.loads((model_dir / "catalogue.json").read_text())
    raw["items"] = raw["items"][:-1]
    (model_dir / "catalogue.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="23 items"):
        RecommenderModel(model_dir, None, require_gpu=False).load()


def test_vocab_that_does_not_match_the_model_is_refused(tmp_path):
    model_dir = b.build_generator(tmp_path / "gen")
    raw = json.loads((model_dir / "vocab.json").read_text())
    raw["tokens"] = raw["tokens"][:-1]
    (model_dir / "vocab.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="26 tokens"):
        GeneratorModel(model_dir, require_gpu=False).load()


def test_vocab_country_ids_must_precede_the_items(tmp_path):
    model_dir = b.build_generator(tmp_path / "gen")
    raw = json.loads((model_dir / "vocab.json").read_text())
    raw["countries"]["France"] = raw["first_item_id"]
    (model_dir / "vocab.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="first_item_id"):
        Vocab.read(model_dir / "vocab.json")


async def _call(model, body):
    payload = await model.preprocess(body)
    return model.postprocess(await model.predict(payload))


def test_model_version_falls_back_to_the_onnx_hash(tmp_path):
    model_dir = b.build_generator(tmp_path / "gen", metadata=False)
    model = GeneratorModel(model_dir, require_gpu=False)
    model.load()
    assert model.version.startswith("sha256:")
    assert len(model.version) == len("sha256:") + 12
    answer = asyncio.run(_call(model, {"instances": [{"n": 2, "max_items": 3, "seed": 0}]}))
    assert answer["predictions"][0]["model_version"] == model.version
    assert len(answer["predictions"][0]["sessions"]) == 2


def test_recommender_without_feature_store_serves_sessions_and_refuses_customers(tmp_path):
    model = RecommenderModel(b.build_recommender(tmp_path / "rec"), None, require_gpu=False)
    model.load()
    answer = asyncio.run(_call(model, {"instances": [{"items": ["85123A"], "k": 3}]}))
    assert len(answer["predictions"][0]["items"]) == 3
    with pytest.raises(NotReady, match="--feature-repo"):
        asyncio.run(_call(model, {"instances": [{"user_id": "17850"}]}))
