"""The Hugging Face directory frontend: ``greencc.from_pretrained(path, task=...)``.

A local directory (config.json, weights, tokenizer files) is loaded with transformers,
offline, and exported with torch's dynamo exporter: causal LMs into the decoder graph
with a KV cache, encoders into ``(input_ids, attention_mask) -> last_hidden_state``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from greencc.errors import ModelLoadError, UsageError
from greencc.frontend.decoder import export_decoder
from greencc.frontend.torch_export import from_torch
from greencc.model import Model

Task = Literal["text-generation", "feature-extraction"]
TASKS = ("text-generation", "feature-extraction")
# Files a tokenizer may consist of; artifacts copy those present in the model's directory.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
)
# Encoder exports trace at this batch and length; both stay symbolic in the graph.
_ENCODER_TRACE = (2, 8)


def is_model_directory(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a Hugging Face ``config.json``."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def tokenizer_files(directory: str | os.PathLike) -> list[Path]:
    """The tokenizer files present in a model directory (empty when it has none)."""
    return [Path(directory) / name for name in TOKENIZER_FILES if (Path(directory) / name).is_file()]


def detect_task(path: str | os.PathLike) -> Task:
    """``text-generation`` when config.json names a causal-LM architecture, else
    ``feature-extraction``. Raises :class:`ModelLoadError` for a directory that is not a model."""
    config = _read_config(Path(path))
    architectures = config.get("architectures") or []
    generative = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return "text-generation" if generative else "feature-extraction"


def from_pretrained(
    path: str | os.PathLike, task: Task | None = None, *, opset: int | None = None, verbose: bool = False
) -> Model:
    """Load a local Hugging Face model directory (offline) as a greencc ``Model``.

    ``task="text-generation"`` gives the decoder graph with a KV cache (inputs
    ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key|value``;
    outputs ``logits``, ``present.{i}.key|value``); ``"feature-extraction"`` gives
    ``last_hidden_state`` from ``input_ids`` and ``attention_mask``; ``None`` picks from the
    architectures in config.json. Dims ``batch`` and ``seq`` (and ``past_seq``,
    ``total_seq``) are symbolic. Raises :class:`ModelLoadError` for a directory that is
    not a model or that transformers cannot load, :class:`UsageError` for an unknown task.
    """
    directory = Path(path)
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task '{task}'", hint=f"use one of {', '.join(TASKS)} or leave it out")
    task = task or detect_task(directory)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = str(directory.resolve())
    if task == "text-generation":
        module = _load(directory, "AutoModelForCausalLM")
        model = export_decoder(module, source=source, opset=opset, verbose=verbose)
    else:
        module = _last_hidden_state(_load(directory, "AutoModel"))
        model = _export_encoder(module, opset=opset, verbose=verbose)
        model.provenance.source = f"hf:{source}"
    model.provenance.options.update({"task": task, "source_dir": source})
    return model


def _read_config(directory: Path) -> dict[str, Any]:
    if not is_model_directory(directory):
        raise ModelLoadError(
            f"'{directory}' is not a Hugging Face model directory (no config.json)",
            hint="point at a folder saved with save_pretrained (config.json, weights, tokenizer files)",
        )
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read '{directory / 'config.json'}': {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{directory / 'config.json'}' is not a JSON object")
    return config


def _load(directory: Path, auto_class: str) -> Any:
    """The model of ``directory`` through ``transformers.<auto_class>``, offline."""
    _read_config(directory)
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise UsageError(
            "from_pretrained needs transformers and PyTorch", hint="pip install 'greencc[torch]' transformers"
        ) from None
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return getattr(transformers, auto_class).from_pretrained(
            directory, local_files_only=True, attn_implementation="sdpa"
        ).eval()
    except Exception as exc:  # transformers raises many unrelated types for bad folders
        raise ModelLoadError(
            f"transformers could not load '{directory}' with {auto_class}: {type(exc).__name__}: {exc}",
            hint="check that the folder holds the weights (model.safetensors) and a config the "
            "installed transformers knows",
        ) from None


def _last_hidden_state(encoder: Any) -> Any:
    import torch

    class LastHiddenState(torch.nn.Module):
        """(input_ids, attention_mask) -> last_hidden_state of a Hugging Face encoder."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    LastHiddenState.__qualname__ = "LastHiddenState"
    return LastHiddenState(encoder).eval()


def _export_encoder(module: Any, *, opset: int | None, verbose: bool) -> Model:
    import torch

    batch, seq = _ENCODER_TRACE
    vocab = int(module.encoder.config.vocab_size)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return from_torch(
        module, (input_ids, attention_mask), dynamic_shapes=dynamic, exporter="dynamo",
        output_names=["last_hidden_state"], opset=opset, verbose=verbose,
    )
