"""Language-model fidelity: perplexity and greedy agreement on a hand-made case, the ppl= and
agree= budgets, decoder prefill feeds from token ids, and verification that checks decode
steps as well as the prefill."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import greencc as gc
from greencc.data import CalibrationData
from greencc.errors import PassFailedError, UsageError
from greencc.instruments.verify import DECODE_STEPS, VerifyInstrument
from greencc.pipeline.base import PassResult, register_pass
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.verify.fidelity import Fidelity, FidelityBudget, TokenTargets, measure_fidelity
from tests.passes.test_quantize_weights import VOCAB, toy_calibration, toy_decoder


def _logits(rows: list[list[list[float]]]) -> np.ndarray:
    return np.asarray(rows, np.float32)


def test_perplexity_and_agreement_by_hand():
    model = toy_decoder()
    # batch 1, 3 tokens [5, 7, 9], the first padded: only position 1 has a target (9).
    feeds = {"input_ids": np.array([[5, 7, 9]]), "attention_mask": np.array([[0, 1, 1]])}
    tokens = TokenTargets.of(model, [feeds])
    assert tokens is not None and tokens.logits_index == 0
    assert tokens.targets[0].tolist() == [[-1, 9, -1]]
    assert tokens.valid[0].tolist() == [[False, True, True]]
    reference = np.zeros((1, 3, VOCAB), np.float32)
    reference[0, 1, 9] = np.log(3.0)  # p(9) = 3 / (VOCAB + 2)
    reference[0, 2, 4] = 1.0
    candidate = np.zeros((1, 3, VOCAB), np.float32)
    candidate[0, 1, 9] = np.log(2.0)  # p(9) = 2 / (VOCAB + 1)
    candidate[0, 2, 1] = 1.0  # argmax differs at the last position
    candidate[0, 0, 3] = 5.0  # a padded position: counts for nothing
    fidelity = measure_fidelity([[reference]], [[candidate]], tokens=tokens)
    assert fidelity.reference_perplexity == pytest.approx((VOCAB + 2) / 3)
    assert fidelity.perplexity == pytest.approx((VOCAB + 1) / 2)
    assert fidelity.perplexity_ratio == pytest.approx(3 * (VOCAB + 1) / (2 * (VOCAB + 2)))
    assert fidelity.agreement == pytest.approx(0.5)  # position 1 agrees (9), position 2 does not


def test_decode_step_has_no_target_but_counts_for_agreement():
    model = toy_decoder()
    step = {"input_ids": np.array([[3], [4]]), "attention_mask": np.ones((2, 5), np.int64)}
    tokens = TokenTargets.of(model, [step])
    assert tokens.targets[0].tolist() == [[-1], [-1]]
    logits = np.random.default_rng(0).standard_normal((2, 1, VOCAB)).astype(np.float32)
    fidelity = measure_fidelity([[logits]], [[logits]], tokens=tokens)
    assert fidelity.perplexity is None and fidelity.agreement == 1.0


def test_no_token_targets_for_models_without_logits():
    encoder = toy_decoder()
    encoder.graph.outputs[0].name = "scores"
    assert TokenTargets.of(encoder, [{"input_ids": np.zeros((1, 2), np.int64)}]) is None


def test_budget_parse_and_check():
    budget = FidelityBudget.parse("ppl=1.02,agree=0.95")
    assert budget.max_perplexity_ratio == 1.02 and budget.min_agreement == 0.95
    assert str(budget) == "ppl=1.02,agree=0.95"
    ok = Fidelity(1.0, 1.0, 0.0, 0.0, 1, perplexity=10.1, reference_perplexity=10.0, agreement=0.97)
    assert budget.check(ok) is None
    worse = Fidelity(1.0, 1.0, 0.0, 0.0, 1, perplexity=10.3, reference_perplexity=10.0, agreement=0.97)
    assert "1.0300x the reference" in budget.check(worse)
    disagree = Fidelity(1.0, 1.0, 0.0, 0.0, 1, perplexity=10.0, reference_perplexity=10.0, agreement=0.9)
    assert "greedy agreement 0.9000 < budget 0.95" in budget.check(disagree)
    assert budget.check(Fidelity(1.0, 1.0, 0.0, 0.0, 1)) is None  # not a language model
    assert budget.primary_metric()(worse) == pytest.approx(-1.03)
    with pytest.raises(UsageError, match="ppl=1.02"):
        FidelityBudget.parse("perplexity=1.02")


def test_prefill_feeds_from_token_ids_are_left_padded():
    model = toy_decoder()
    data = CalibrationData.from_token_ids([[1, 2, 3], [4, 5]], model, batch_size=2, pad_id=0)
    (feeds,) = data.batches()
    assert feeds["input_ids"].tolist() == [[1, 2, 3], [0, 4, 5]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert feeds["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert feeds["past_key_values.0.key"].shape == (2, 2, 0, 32)
    data.check(model)
    with pytest.raises(UsageError, match="not a decoder|has no input_ids"):
        CalibrationData.from_token_ids([[1]], _encoder(), batch_size=1)


def test_prefill_feeds_from_texts_with_a_tokenizer():
    model = toy_decoder()

    def tokenizer(text: str, truncation: bool, max_length: int) -> dict:
        return {"input_ids": [ord(c) % VOCAB for c in text][:max_length]}

    data = CalibrationData.from_texts(["abc", "hello"], tokenizer, model=model, batch_size=2, max_length=4)
    (feeds,) = data.batches()
    assert feeds["input_ids"].shape == (2, 4) and feeds["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]


def _encoder() -> gc.Model:
    from tests.helpers import model_from_text

    return model_from_text("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
""")


def test_verification_samples_include_decode_steps():
    model = toy_decoder()
    calibration = toy_calibration(model, count=4)
    ctx = PassContext(target="ort-cpu", calibration=calibration, verification_samples=2)
    VerifyInstrument().enter_pipeline(model, ctx)
    samples = ctx.reference.samples
    assert len(samples) == 2 + 2 * DECODE_STEPS
    prefill = samples[0]["input_ids"].shape[1]
    steps = samples[2:2 + DECODE_STEPS]
    for index, step in enumerate(steps):
        assert step["input_ids"].shape == (2, 1)
        assert step["past_key_values.0.key"].shape[2] == prefill + index
        assert step["attention_mask"].shape[1] == prefill + index + 1
    assert steps[0]["position_ids"].tolist() == (samples[0]["position_ids"][:, -1:] + 1).tolist()


@register_pass("test-scale-past")
def _scale_past(model: gc.Model, ctx: PassContext) -> PassResult:
    """Concat(past, k) -> Concat(past · 1.01, k): wrong only once there is a past."""
    node = next(n for n in model.graph if n.name == "k_cat")
    scale = ir.Value(name="past_scale", const_value=ir.tensor(np.array(1.01, np.float32)),
                     type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([]))
    model.graph.register_initializer(scale)
    scaled = ir.node("Mul", [node.inputs[0], scale], outputs=[ir.Value(name="past_scaled")])
    model.graph.insert_before(node, scaled)
    node.replace_input_with(0, scaled.outputs[0])
    return PassResult(model, True)


def test_exact_pass_that_breaks_only_decode_is_caught():
    model = toy_decoder()
    ctx = PassContext(target="ort-cpu", calibration=toy_calibration(model, count=2), instruments=[VerifyInstrument()])
    with ctx, pytest.raises(PassFailedError, match="changed the model's outputs"):
        PassManager("test-scale-past").run(model, ctx)
