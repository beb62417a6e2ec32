"""scripts/train_llm.py on a tiny Llama in a temporary cache: a few seeded steps are
deterministic, the best step is the one saved, and the directory loads offline with
transformers' AutoModelForCausalLM and AutoTokenizer."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from scripts import train_llm  # noqa: E402

TINY = dataclasses.replace(
    train_llm.TRAINED,
    shape=train_llm.LlamaShape(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, max_positions=64),
    seq=16, batch=2, warmup_steps=2, max_steps=6, eval_every=2, patience=2,
)


def _silent(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model trained once: its directory and record."""
    directory = tmp_path_factory.mktemp("llm") / "tiny"
    record = train_llm.train(TINY, directory, log=_silent)
    return directory, record


def test_split_is_contiguous_ninety_ten():
    train, valid = train_llm.split_bytes("abcdefghij")
    assert (train, valid) == (b"abcdefghi", b"j")
    text = train_llm.corpus_text()
    train, valid = train_llm.split_bytes(text)
    assert train + valid == text.encode() and len(train) == int(len(train + valid) * 0.9)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = dataclasses.replace(TINY, lr=1.0, min_lr_ratio=0.1, warmup_steps=4, max_steps=14)
    rates = [train_llm._lr_at(step, config) for step in range(config.max_steps)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))
    assert train_llm._lr_at(config.max_steps, config) == pytest.approx(0.1)


def test_training_is_deterministic_under_the_seed(trained, tmp_path):
    directory, record = trained
    again = train_llm.train(TINY, tmp_path / "again", log=_silent)
    first, second = load_file(directory / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)
    assert [h["valid_loss"] for h in again["history"]] == [h["valid_loss"] for h in record["history"]]
    other = train_llm.train(dataclasses.replace(TINY, seed=1), tmp_path / "other", log=_silent)
    assert [h["valid_loss"] for h in other["history"]] != [h["valid_loss"] for h in record["history"]]


def test_the_saved_weights_are_the_best_steps(trained):
    from transformers import AutoModelForCausalLM

    directory, record = trained
    best = min(record["history"], key=lambda h: h["valid_loss"])
    assert record["best_step"] == best["step"] and record["valid_loss"] == pytest.approx(best["valid_loss"], abs=1e-5)
    assert record["valid_ppl_per_byte"] == pytest.approx(math.exp(record["valid_loss"]), rel=1e-4)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    _, valid = train_llm.split_bytes(train_llm.corpus_text())
    data = torch.frombuffer(bytearray(valid), dtype=torch.uint8).long()
    assert train_llm.validation_loss(model, data, TINY.seq) == pytest.approx(record["valid_loss"], abs=1e-4)


def test_early_stopping_keeps_the_best_step(tmp_path):
    # A learning rate this high makes the validation loss climb after the first evaluation.
    config = dataclasses.replace(TINY, lr=3.0, warmup_steps=1, max_steps=40, patience=2, grad_clip=100.0)
    record = train_llm.train(config, tmp_path / "diverged", log=_silent)
    assert record["stopped_by"] == "early-stopping"
    assert record["steps_run"] < config.max_steps
    assert record["best_step"] < record["steps_run"]


def test_directory_loads_offline_with_auto_classes(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, _ = trained
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in directory.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    text = "Byte tokens: naïve café\n\tdone"
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (256, 257, 258)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    assert model.config.vocab_size == 259 and model.config.num_key_value_heads == 1
    out = model.generate(torch.tensor([ids[:8]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == 257


def test_ensure_trained_reuses_the_cache_and_retrains_on_a_new_recipe(tmp_path, monkeypatch):
    first = train_llm.ensure_trained(TINY, cache=tmp_path, log=_silent)
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def refuse(*_, **__):
        raise AssertionError("trained again although the cache holds this recipe")

    with monkeypatch.context() as patch:
        patch.setattr(train_llm, "train", refuse)
        assert train_llm.ensure_trained(TINY, cache=tmp_path, log=_silent) == first
        # The time limit does not change the recipe: a slower machine reuses the model.
        assert train_llm.ensure_trained(dataclasses.replace(TINY, time_limit_s=1.0), cache=tmp_path, log=_silent) == first
    train_llm.ensure_trained(dataclasses.replace(TINY, seed=3), cache=tmp_path, log=_silent)
    assert (first / "model.safetensors").stat().st_mtime_ns != stamp


def test_large_random_config_is_seeded(tmp_path):
    shape = train_llm.LlamaShape(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=300,
                                 max_positions=64, tie_embeddings=True)
    a = train_llm.ensure_large_random(shape, seed=5, cache=tmp_path / "a")
    b = train_llm.ensure_large_random(shape, seed=5, cache=tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
    config = json.loads((a / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == 300
    assert (a / "tokenizer.json").exists()
