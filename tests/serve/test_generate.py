"""Generation for decoder variants: tokens streamed one per line as generate() would pick
them, with joules per token."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import greencc as gc
from greencc.serve.generation import GenerationRequest, stream_tokens
from greencc.serve.payload import Limits, PayloadError
from greencc.target.generation import Sampling

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from greencc.serve.engines import BackgroundServer  # noqa: E402
from greencc.serve.service import Service  # noqa: E402
from greencc.serve.variants import variant_from  # noqa: E402

PROMPT = [3, 9, 4, 5]


VOCAB = 16
EOS = 2


def toy_decoder() -> gc.Model:
    """A one-layer decoder with the contract's signature whose next token is ``token + 1``
    (mod 16), and a KV cache that appends each token: generation without torch."""
    table = np.zeros((VOCAB, VOCAB), np.float32)
    table[np.arange(VOCAB), (np.arange(VOCAB) + 1) % VOCAB] = 1.0
    kv = ["batch", 1, "past", 1]
    inputs = [oh.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "seq"]),
              oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "total"]),
              oh.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["batch", "seq"])]
    inputs += [oh.make_tensor_value_info(f"past_key_values.0.{k}", onnx.TensorProto.FLOAT, kv) for k in ("key", "value")]
    outputs = [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    outputs += [oh.make_tensor_value_info(f"present.0.{k}", onnx.TensorProto.FLOAT, ["batch", 1, "total", 1])
                for k in ("key", "value")]
    nodes = [oh.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0),
             oh.make_node("Cast", ["input_ids"], ["ids_f"], to=onnx.TensorProto.FLOAT),
             oh.make_node("Unsqueeze", ["ids_f", "axes"], ["new_kv"])]
    nodes += [oh.make_node("Concat", [f"past_key_values.0.{k}", "new_kv"], [f"present.0.{k}"], axis=2)
              for k in ("key", "value")]
    graph = oh.make_graph(nodes, "toy", inputs, outputs, [onnx.numpy_helper.from_array(table, "table"),
                                                          onnx.numpy_helper.from_array(np.array([1, 3]), "axes")])
    model = gc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10))
    gc.DecoderSpec(family="toy", num_layers=1, num_heads=1, num_kv_heads=1, head_dim=1, hidden_size=1,
                   vocab_size=VOCAB, eos_token_ids=(EOS,)).attach(model)
    return model


@pytest.fixture(scope="module")
def decoder():
    return gc.compile(toy_decoder(), pipeline="-O0", dims={"batch": 1, "seq": 4, "past": 4, "total": 8})


def test_streamed_tokens_are_generate_s_tokens(decoder):
    streamed = list(stream_tokens(decoder, GenerationRequest(PROMPT, 6, Sampling(), stream=True)))
    assert streamed == decoder.generate([PROMPT], 6).new_tokens[0].tolist() == [6, 7, 8, 9, 10, 11]
    # The stream stops after EOS, as generate does: 14, 15, 0, 1, 2.
    streamed = list(stream_tokens(decoder, GenerationRequest([13], 8, Sampling())))
    assert streamed == [14, 15, 0, 1, EOS]


def test_generation_requests_are_checked():
    for data, message in (({"input_ids": []}, "non-empty list"), ({"input_ids": [1], "max_new_tokens": 0},
                                                                  "max_new_tokens"),
                          ({"input_ids": [1], "temperature": -1}, "temperature")):
        with pytest.raises(PayloadError, match=message):
            GenerationRequest.from_payload(data, Limits())


def test_http_generation_streams_tokens_and_reports_joules_per_token(decoder):
    server = BackgroundServer(Service([variant_from(decoder, "gpt2")])).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            whole = client.post("/v1/generate", json={"input_ids": PROMPT, "max_new_tokens": 5}).json()
            with client.stream("POST", "/v1/generate",
                               json={"input_ids": PROMPT, "max_new_tokens": 5, "stream": True}) as response:
                assert response.headers["content-type"].startswith("application/x-ndjson")
                events = [json.loads(line) for line in response.iter_lines() if line]
            refused = client.post("/v1/generate", json={"input_ids": [10**9], "max_new_tokens": 2})
            metrics = client.get("/metrics").text
    finally:
        server.stop()
    tokens = [e["token"] for e in events if "token" in e]
    assert tokens == whole["new_tokens"] and len(tokens) == whole["tokens"] >= 1
    final = events[-1]
    assert final["done"] and final["j_per_token"] == pytest.approx(final["energy_j"] / len(tokens))
    assert refused.status_code == 422 and "token ids must lie in" in refused.json()["error"]
    assert "greencc_serve_joules_per_token" in metrics and "greencc_serve_tokens_total" in metrics
    assert np.isfinite(whole["energy_j"])
