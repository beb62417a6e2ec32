"""The language models of the decoder benchmarks, made by one seeded script: a small
Llama trained on byte-level text (fidelity: perplexity, greedy agreement) and a ~135 M
parameter random-init Llama (speed), both cached as Hugging Face directories.

    nice -n 19 HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_llm.py [--max-steps N] [--minutes M]

Importable: ``ensure_trained()`` and ``ensure_large_random()`` return the cached directory,
building it first when missing. The text is ``pydoc_data.topics`` (ships with Python),
split contiguously 90/10 into training and validation bytes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BYTE_VOCAB = 256
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
RECORD_FILE = "train_record.json"


@dataclass(frozen=True)
class LlamaShape:
    """A Llama architecture: sizes in elements, ``max_positions`` in tokens."""

    layers: int = 4
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 704
    vocab: int = BYTE_VOCAB + len(SPECIAL_TOKENS)
    max_positions: int = 1024
    rope_theta: float = 10000.0
    tie_embeddings: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """The trained model's recipe: AdamW with linear warmup then cosine decay to
    ``min_lr_ratio * lr``, early stopping after ``patience`` evaluations without a lower
    validation loss (the best step's weights are kept). ``seq`` and ``batch`` in tokens
    and sequences; ``time_limit_s`` stops early on a slow machine (recorded as such)."""

    shape: LlamaShape = LlamaShape()
    seq: int = 256
    batch: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    max_steps: int = 240
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 40
    patience: int = 3
    seed: int = 0
    time_limit_s: float = 45 * 60.0


TRAINED = TrainConfig()
LARGE = LlamaShape(layers=30, hidden=576, heads=9, kv_heads=3, intermediate=1536, vocab=49152,
                   max_positions=2048, tie_embeddings=True)
LARGE_SEED = 0


def llm_cache() -> Path:
    """Where the language models live: ``greencc.cache.cache_dir() / "llm"``."""
    from greencc.cache import cache_dir

    return cache_dir() / "llm"


def corpus_text() -> str:
    """Every ``pydoc_data.topics`` entry, in sorted topic order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def split_bytes(text: str, train_fraction: float = 0.9) -> tuple[bytes, bytes]:
    """(training, validation) UTF-8 bytes of ``text``, split contiguously at ``train_fraction``."""
    data = text.encode("utf-8")
    cut = int(len(data) * train_fraction)
    return data[:cut], data[cut:]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's printable stand-ins for bytes: the alphabet ByteLevel pre-tokenizers use.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def write_tokenizer(directory: Path, max_length: int) -> None:
    """Write tokenizer.json and tokenizer_config.json of the byte tokenizer: token id = byte
    value (a byte-level BPE without merges), then ``<s>``, ``</s>``, ``<pad>`` at 256–258.
    Both transformers' AutoTokenizer and onnxruntime-genai load them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
              "unk_token": None, "add_bos_token": False, "add_prefix_space": False,
              "model_max_length": max_length, "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def llama_config(shape: LlamaShape):
    """The transformers ``LlamaConfig`` of ``shape`` (byte tokenizer's special ids)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions, rope_theta=shape.rope_theta, rms_norm_eps=1e-5,
        tie_word_embeddings=shape.tie_embeddings, hidden_act="silu",
        bos_token_id=BYTE_VOCAB, eos_token_id=BYTE_VOCAB + 1, pad_token_id=BYTE_VOCAB + 2,
    )


def _seeded_model(shape: LlamaShape, seed: int):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(shape)).float()


def _save(model, directory: Path, record: dict) -> None:
    from transformers import GenerationConfig

    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    config = model.config
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id, do_sample=False,
                     max_length=config.max_position_embeddings).save_pretrained(directory)
    write_tokenizer(directory, config.max_position_embeddings)
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _cached(directory: Path, key: str) -> bool:
    record = directory / RECORD_FILE
    return record.exists() and json.loads(record.read_text()).get("key") == key and (directory / "model.safetensors").exists()


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    low = config.lr * config.min_lr_ratio
    return low + 0.5 * (config.lr - low) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def validation_loss(model, data, seq: int, batch: int = 32) -> float:
    """Mean next-byte cross-entropy (nats) of ``model`` over ``data`` (a 1-D int64 tensor) cut
    into non-overlapping windows of ``seq + 1`` bytes; ``exp`` of it is perplexity per byte."""
    import torch

    windows = data[: (len(data) - 1) // seq * seq + 1]
    inputs = windows[:-1].view(-1, seq)
    targets = windows[1:].view(-1, seq)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            logits = model(input_ids=inputs[i : i + batch]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[i : i + batch].reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += targets[i : i + batch].numel()
    model.train()
    return total / count


def train(config: TrainConfig, directory: Path, *, log=print) -> dict:
    """Train the byte-level Llama of ``config`` and save its best step (by validation loss)
    as a Hugging Face directory; returns the training record written beside it (steps,
    best step, validation perplexity per byte, wall time in s, the evaluation history)."""
    import torch

    torch.use_deterministic_algorithms(True)
    text = corpus_text()
    train_bytes, valid_bytes = split_bytes(text)
    train_data = torch.frombuffer(bytearray(train_bytes), dtype=torch.uint8).long()
    valid_data = torch.frombuffer(bytearray(valid_bytes), dtype=torch.uint8).long()
    model = _seeded_model(config.shape, config.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    batches = torch.Generator().manual_seed(config.seed)
    offsets = torch.arange(config.seq + 1)
    best_loss, best_step, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict] = []
    stop, since_best, step = "max-steps", 0, 0
    start = time.perf_counter()
    model.train()
    for step in range(1, config.max_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step - 1, config)
        starts = torch.randint(0, len(train_data) - config.seq - 1, (config.batch,), generator=batches)
        window = train_data[starts[:, None] + offsets]
        logits = model(input_ids=window[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if step % config.eval_every == 0 or step == config.max_steps:
            valid = validation_loss(model, valid_data, config.seq)
            elapsed = time.perf_counter() - start
            history.append({"step": step, "train_loss": round(loss.item(), 5), "valid_loss": round(valid, 5),
                            "valid_ppl_per_byte": round(math.exp(valid), 4), "wall_s": round(elapsed, 1)})
            log(f"step {step}: train loss {loss.item():.4f}, validation loss {valid:.4f} "
                f"(perplexity per byte {math.exp(valid):.3f}), {elapsed:.0f} s")
            if valid < best_loss:
                best_loss, best_step, since_best = valid, step, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if since_best >= config.patience:
                    stop = "early-stopping"
                    break
            if elapsed > config.time_limit_s:
                stop = "time-limit"
                break
    model.load_state_dict(best_state)
    record = {
        "key": _recipe_key(_trained_recipe(config)),
        "recipe": _trained_recipe(config),
        "steps_run": step, "best_step": best_step, "stopped_by": stop,
        "valid_loss": round(best_loss, 5), "valid_ppl_per_byte": round(math.exp(best_loss), 4),
        "train_bytes": len(train_bytes), "valid_bytes": len(valid_bytes),
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
        "history": history,
    }
    _save(model, directory, record)
    return record


def _trained_recipe(config: TrainConfig) -> dict:
    from transformers import __version__ as transformers_version

    return {"train": dataclasses.asdict(config) | {"time_limit_s": None},
            "corpus_sha256": hashlib.sha256(corpus_text().encode()).hexdigest(),
            "python": platform.python_version(), "transformers": transformers_version}


def ensure_trained(config: TrainConfig = TRAINED, cache: Path | None = None, *, log=print) -> Path:
    """The trained byte-level Llama's Hugging Face directory, trained first if the cache
    holds no model of this exact recipe (config, corpus, Python and transformers versions)."""
    directory = (cache or llm_cache()) / f"byte-llama-{config.shape.layers}l{config.shape.hidden}"
    if not _cached(directory, _recipe_key(_trained_recipe(config))):
        train(config, directory, log=log)
    return directory


def ensure_large_random(shape: LlamaShape = LARGE, seed: int = LARGE_SEED, cache: Path | None = None) -> Path:
    """The random-init ~135 M parameter Llama's Hugging Face directory (same byte tokenizer;
    ids above 258 are never produced by it), built from ``seed`` if not cached."""
    from transformers import __version__ as transformers_version

    recipe = {"shape": dataclasses.asdict(shape), "seed": seed, "transformers": transformers_version}
    directory = (cache or llm_cache()) / f"random-llama-{shape.layers}l{shape.hidden}"
    if not _cached(directory, _recipe_key(recipe)):
        model = _seeded_model(shape, seed)
        _save(model, directory, {"key": _recipe_key(recipe), "recipe": recipe,
                                 "parameters": sum(p.numel() for p in model.parameters())})
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=TRAINED.max_steps)
    parser.add_argument("--minutes", type=float, default=TRAINED.time_limit_s / 60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true", help="do not build the random-init large model")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    config = dataclasses.replace(TRAINED, max_steps=args.max_steps, time_limit_s=args.minutes * 60)
    trained = ensure_trained(config)
    print(f"trained: {trained}\n{json.dumps({k: v for k, v in json.loads((trained / RECORD_FILE).read_text()).items() if k != 'history'}, indent=1)}")
    if not args.skip_large:
        print(f"large: {ensure_large_random()}")


if __name__ == "__main__":
    sys.exit(main())
