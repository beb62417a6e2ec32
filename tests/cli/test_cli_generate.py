"""Decoders on the command line: compile and inspect a Hugging Face directory, ``greencc
generate`` (prompt through the artifact's tokenizer, or ids), ``greencc bench --generate``,
per-token figures in the report, and bad input as greencc errors with their exit codes."""

from __future__ import annotations

import json
import os

import pytest

import greencc as gc
from greencc.cli import main
from tests import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny Qwen2 directory compiled at -O1 (the artifact carries its tokenizer)."""
    root = tmp_path_factory.mktemp("generate-cli")
    directory = models.decoder_directory("qwen2", root / "tiny-qwen2")
    out = root / "out"
    assert main(["compile", str(directory), "-O1", "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def artifact_without_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("no-tokenizer") / "out"
    gc.compile(models.decoder_model("gpt2"), target="ort-cpu", pipeline="-O0").save(out)
    return out


def test_compile_of_a_directory_carries_the_tokenizer_and_per_token_figures(artifact) -> None:
    manifest = json.loads((artifact / "greencc.json").read_text())
    assert sorted(manifest["tokenizer"]) == ["tokenizer.json", "tokenizer_config.json"]
    assert all((artifact / name).is_file() for name in manifest["tokenizer"])
    report = json.loads((artifact / "report.json").read_text())
    per_token = report["summary"]["per_token"]
    assert per_token["kind"] == "estimate" and per_token["context"] == 128
    assert per_token["final_j_per_token"] > 0 and per_token["final_g_per_1k_tokens"] > 0
    assert report["model"]["source"].startswith("hf:")


def test_generate_a_prompt_greedily(artifact, capsys) -> None:
    assert main(["generate", str(artifact), "--prompt", "Hello", "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Hello")
    assert "prefill" in err and "tokens/s" in err
    assert main(["generate", str(artifact), "--prompt", "Hello", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == out  # greedy: the same text again


def test_generate_matches_the_python_api(artifact, capsys) -> None:
    assert main(["generate", str(artifact), "--ids", "5,6,7", "--max-new-tokens", "5", "--json",
                 "--temperature", "0.9", "--top-k", "20", "--seed", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    compiled = gc.CompiledModel.load(artifact)
    expected = compiled.generate([[5, 6, 7]], 5, temperature=0.9, top_k=20, seed=3)
    assert printed["new_ids"] == expected.new_tokens[0].tolist()
    assert printed["prompt_ids"] == [5, 6, 7] and printed["text"] is None


def test_bench_generate_prints_prefill_decode_and_memory(artifact, capsys) -> None:
    assert main(["bench", str(artifact), "--generate", "--batch", "2", "--prompt-tokens", "8",
                 "--new-tokens", "4", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "8-token prompt" in out
    assert "tokens/s" in out and "at batch 2" in out
    assert "peak RSS" in out and "MB" in out
    assert main(["bench", str(artifact), "--generate", "--repeats", "2", "--new-tokens", "3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["decode_tokens_per_s"] > 0 and figures["peak_rss_mb"] > 0 and figures["batch"] == 1


def test_inspect_a_directory(artifact, tmp_path, capsys) -> None:
    directory = models.decoder_directory("gpt2", tmp_path / "tiny-gpt2")
    assert main(["inspect", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "past_key_values.0.key" in out and "present.1.value" in out


def test_a_prompt_without_a_tokenizer_is_a_usage_error(artifact_without_tokenizer, capsys) -> None:
    assert main(["generate", str(artifact_without_tokenizer), "--prompt", "Hi"]) == 2
    assert "carries no tokenizer" in capsys.readouterr().err
    assert main(["generate", str(artifact_without_tokenizer), "--ids", "1,2", "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.strip().split(",")) <= 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ids", "1,2", "--max-new-tokens", "0"], "max_new_tokens=0"),
        (["--ids", "1,x"], "not a comma-separated list"),
        (["--ids", ","], "names no token"),
        ([], "one of the arguments --prompt --ids is required"),
    ],
)
def test_bad_generate_arguments(artifact_without_tokenizer, capsys, args, message) -> None:
    assert main(["generate", str(artifact_without_tokenizer), *args]) == 2
    assert message in capsys.readouterr().err


def test_generate_of_a_model_that_is_not_a_decoder(tmp_path, capsys) -> None:
    out = tmp_path / "cnn"
    gc.compile(models.small_cnn_model(), target="ort-cpu", pipeline="-O0").save(out)
    assert main(["generate", str(out), "--ids", "1"]) == 2
    assert "not a decoder" in capsys.readouterr().err
    assert main(["bench", str(out), "--generate", "--repeats", "1"]) == 2


def test_compile_of_a_directory_that_is_not_a_model(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert main(["compile", str(empty), "-o", str(tmp_path / "out"), "-q"]) == 3
    assert "could not load" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
