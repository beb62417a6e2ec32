"""Generate text with a decoder compiled by greencc: a tiny random Llama built in-process (no
download) is saved as a Hugging Face directory, compiled from it, saved as an artifact that
carries its tokenizer, and used to generate greedily and by sampling; the ledger prints its
energy per generated token."""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

import greencc as gc  # noqa: E402

work = Path(tempfile.mkdtemp(prefix="greencc-generate-"))

# A Hugging Face directory: a 2-layer Llama (random weights) and a character-level tokenizer.
vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{chr(c): c for c in range(32, 127)}}  # printable ASCII
characters = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
characters.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
characters.decoder = decoders.Fuse()
PreTrainedTokenizerFast(tokenizer_object=characters, bos_token="<s>", eos_token="</s>",
                        pad_token="<pad>").save_pretrained(work / "tiny-llama")
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)).save_pretrained(work / "tiny-llama")

# Compile the directory (the same as `greencc compile DIR -O2 -o OUT`) and save the artifact.
model = gc.from_pretrained(work / "tiny-llama")
compiled = gc.compile(model, target="ort-cpu", pipeline="-O2", threads=2)
print(compiled.report.to_console())
compiled.save(work / "artifact")

# Reopen it and generate: greedy, then sampled (reproducible under the seed).
artifact = gc.CompiledModel.load(work / "artifact")
tokenizer = artifact.tokenizer()
prompts = [tokenizer("The green ")["input_ids"], tokenizer("A compiler")["input_ids"]]
greedy = artifact.generate(prompts, 24, stop_tokens=())
sampled = artifact.generate(prompts, 24, temperature=0.8, top_p=0.95, seed=1, stop_tokens=())
for name, result in (("greedy", greedy), ("sampled", sampled)):
    for row in result.new_tokens:
        print(f"{name:>8}: {tokenizer.decode(row.tolist(), skip_special_tokens=True)!r}")
print(f"prefill {greedy.prefill_ms:.2f} ms, decode {greedy.decode_tokens_per_s:.0f} tokens/s at batch 2")
speed = artifact.benchmark_generation(batch=1, prompt_tokens=32, new_tokens=32, runs=3)
print(f"bench: prefill {speed.prefill_ms:.2f} ms for 32 tokens, decode {speed.decode_tokens_per_s:.0f} tokens/s, "
      f"peak RSS {speed.peak_rss_mb:.0f} MB")
per_token = compiled.report.per_token_figures()
print(f"{per_token['final_j_per_token']:.3g} J/token, {per_token['final_g_per_1k_tokens']:.3g} gCO2e per 1k tokens "
      f"[{per_token['label']}]")
