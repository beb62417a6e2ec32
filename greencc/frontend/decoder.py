"""The decoder frontend: a Hugging Face causal LM traced into greencc's decoder graph.

One graph serves prefill and decode: ``input_ids``, ``attention_mask`` (left padding),
``position_ids`` and ``past_key_values.{i}.key|value`` in; ``logits`` and
``present.{i}.key|value`` out, with the symbolic dims ``batch``, ``seq``, ``past_seq`` and
``total_seq`` (= past_seq + seq). These are the names Hugging Face's ONNX exports and
onnxruntime-genai use, so generation runs on any graph the passes leave behind.
"""

from __future__ import annotations

import sys
from typing import Any

from greencc.errors import ExportError, UsageError
from greencc.frontend.exporter_output import exception_summary, quiet_exporters
from greencc.ir.io import check_model
from greencc.model import DecoderSpec, Model, Provenance

# The trace runs with a non-empty past and seq, batch and past_seq all distinct and above
# one, so that the exporter keeps every one of them symbolic (a size 0 or 1 specializes).
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 3, 5


def is_causal_lm(module: Any) -> bool:
    """True for a transformers model with a language-modelling head that generates."""
    # A transformers model instance implies transformers is already imported, so looking it
    # up in sys.modules never imports it for other modules.
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    config = getattr(module, "config", None)
    return (
        isinstance(module, transformers.PreTrainedModel)
        and isinstance(module, transformers.GenerationMixin)
        and config is not None
        and not getattr(config, "is_encoder_decoder", False)
    )


def export_decoder(
    causal_lm: Any, *, source: str | None = None, opset: int | None = None, verbose: bool = False
) -> Model:
    """Trace a transformers causal LM (``...ForCausalLM``, ``GPT2LMHeadModel``) into the
    decoder graph, with a ``greencc.decoder`` spec (see :class:`DecoderSpec`) attached.

    ``source`` is the Hugging Face directory the model came from (kept in the spec and the
    provenance, so artifacts can carry its tokenizer). Raises :class:`ExportError` when the
    dynamo exporter fails and :class:`UsageError` for a module that is not a causal LM.
    """
    import torch

    if not is_causal_lm(causal_lm):
        raise UsageError(
            f"{type(causal_lm).__name__} is not a transformers causal language model",
            hint="pass a model loaded with transformers.AutoModelForCausalLM",
        )
    was_training = causal_lm.training
    causal_lm.eval()
    try:
        with torch.no_grad(), quiet_exporters(enabled=not verbose):
            spec = _decoder_spec(causal_lm, source)
            wrapper = _with_flat_cache(causal_lm, spec.num_layers)
            args, shapes, names, output_names = _trace_inputs(spec)
            try:
                program = torch.onnx.export(
                    wrapper, args, dynamo=True, input_names=names, output_names=output_names,
                    dynamic_shapes=shapes, opset_version=opset, verbose=False, external_data=False,
                )
                ir_model = program.model
                _name_total_seq(ir_model)
                check_model(ir_model, f"the decoder export of {type(causal_lm).__name__}")
            except Exception as exc:  # the exporter raises many unrelated types
                raise ExportError(
                    f"could not export {type(causal_lm).__name__} as a decoder with a KV cache: "
                    f"{exception_summary(exc)}",
                    hint="verbose=True shows the exporter's output; check that the family runs "
                    "with transformers' DynamicCache",
                ) from exc
    finally:
        causal_lm.train(was_training)
    spec.attach(ir_model)
    provenance = Provenance(
        source=f"hf:{source}" if source else f"torch:{type(causal_lm).__module__}.{type(causal_lm).__qualname__}",
        exporter="dynamo",
        options={
            "task": "text-generation",
            "torch": torch.__version__,
            "family": spec.family,
            "attn_implementation": getattr(causal_lm.config, "_attn_implementation", None),
            "input_names": names,
            "output_names": output_names,
            "opset": opset if opset is not None else ir_model.opset_imports.get(""),
            **({"source_dir": source} if source else {}),
        },
    )
    return Model(ir_model, provenance)


def _decoder_spec(causal_lm: Any, source: str | None) -> DecoderSpec:
    """The spec from the config, with the KV layout read off one probe forward."""
    import torch

    config = causal_lm.config
    probe = causal_lm(input_ids=torch.zeros(1, 2, dtype=torch.int64), use_cache=True)
    layers = _cache_tensors(probe)
    _, kv_heads, _, head_dim = layers[0].shape
    generation = getattr(causal_lm, "generation_config", None)

    def token(name: str) -> Any:
        value = getattr(config, name, None)
        if value is None and generation is not None:
            value = getattr(generation, name, None)
        return value

    eos = token("eos_token_id")
    eos_ids = tuple(int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos]) if t is not None)
    rope = getattr(config, "rope_theta", None)
    if rope is None:
        rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    bos, pad = token("bos_token_id"), token("pad_token_id")
    return DecoderSpec(
        family=config.model_type,
        num_layers=len(layers) // 2,
        num_heads=int(config.num_attention_heads),
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        pad_token_id=None if pad is None else int(pad),
        max_positions=getattr(config, "max_position_embeddings", None),
        rope_theta=None if rope is None else float(rope),
        source=source,
    )


def _cache_tensors(output: Any) -> list[Any]:
    """The present key and value tensors of a forward's output, layer by layer."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = output.past_key_values
    tensors: list[Any] = []
    for layer in cache.layers:
        tensors += [layer.keys, layer.values]
    return tensors


def _with_flat_cache(causal_lm: Any, num_layers: int) -> Any:
    """A torch module whose forward has the decoder graph's flat signature."""
    import torch
    from transformers.cache_utils import DynamicCache

    class DecoderWithCache(torch.nn.Module):
        """(input_ids, attention_mask, position_ids, *past) -> (logits, *present)."""

        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):  # noqa: ANN001
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            output = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                cache=cache, use_cache=True,
            )
            return (output.logits, *_cache_tensors(output))

    DecoderWithCache.__qualname__ = "DecoderWithCache"
    return DecoderWithCache(causal_lm).eval()


def _trace_inputs(spec: DecoderSpec) -> tuple[tuple, tuple, list[str], list[str]]:
    """Example arguments, torch dynamic shapes, input and output names for the trace."""
    import torch

    batch, seq, past = _TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    position_ids = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv_shape = (batch, spec.num_kv_heads, past, spec.head_dim)
    pasts = tuple(torch.randn(kv_shape, generator=generator) for _ in range(2 * spec.num_layers))
    dim = torch.export.Dim
    batch_dim, seq_dim, past_dim = dim("batch"), dim("seq"), dim("past_seq")
    # total_seq cannot be declared as seq + past_seq (torch.export only derives a dim from
    # one other); DYNAMIC lets the tracer find that relation, and it is named afterwards.
    shapes = (
        {0: batch_dim, 1: seq_dim},
        {0: batch_dim, 1: dim.DYNAMIC},
        {0: batch_dim, 1: seq_dim},
        tuple({0: batch_dim, 2: past_dim} for _ in pasts),
    )
    names = ["input_ids", "attention_mask", "position_ids", *spec.past_names()]
    return (input_ids, attention_mask, position_ids, *pasts), shapes, names, ["logits", *spec.present_names()]


def _name_total_seq(ir_model: Any) -> None:
    """Call the mask's length and the presents' length ``total_seq`` everywhere."""
    import onnx_ir as ir

    mask = next(v for v in ir_model.graph.inputs if v.name == "attention_mask")
    renames = {"past_seq + seq": "total_seq", "seq + past_seq": "total_seq"}
    mask_dim = mask.shape[1] if mask.shape is not None else None
    if mask_dim is not None and not isinstance(mask_dim, int) and mask_dim.value:
        renames[mask_dim.value] = "total_seq"
    for graph in ir_model.graphs():
        values = [*graph.inputs, *graph.outputs, *(out for node in graph for out in node.outputs)]
        for value in values:
            if value.shape is None:
                continue
            if any(not isinstance(d, int) and d.value in renames for d in value.shape):
                value.shape = ir.Shape(
                    [d if isinstance(d, int) or d.value not in renames else ir.SymbolicDim(renames[d.value])
                     for d in value.shape]
                )
