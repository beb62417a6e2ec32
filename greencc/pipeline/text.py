"""Textual pipelines that round-trip: ``cleanup,fold-constants{max_size=1048576}``.

Grammar: ``pipeline := item (',' item)*``; ``item := name ['{' key=value (',' key=value)* '}']``.
A value containing ``,{}=`` or spaces is written in double quotes. ``steps=N`` on any item
repeats that pass up to N times, stopping early once it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greencc.errors import UsageError
from greencc.pipeline.base import MANAGER_OPTIONS, Pass, get_pass_class

# A decoder's -O3 and green first move its weights to int4 blocks (MatMulNBits) wherever the
# cost model prices that below float — decode reads every weight once per token, so its
# energy follows the weight bytes; models without a KV cache skip it and keep the int8 of
# before. Whatever int4 leaves in float is then offered to quantize-int8. accuracy_level=4
# (int8 activations, as onnxruntime-genai's CPU int4): a 135 M decoder's decode step ran
# 0.74x genai int4's speed with float32 compute (level 0), and the kernel 2x slower at one row.
WEIGHT_ONLY = "quantize-weights{bits=4,accuracy_level=4,models=decoders,when=saves-energy}"
PRESETS: dict[str, str] = {
    "-O0": "",
    "-O1": "cleanup",
    "-O2": "cleanup,fuse,dce",
    # trim-padded-keys applies only where the calibration inputs are padded at the end
    # (MiniLM int8 at seq 128: 14% / 21% less time per call at b1 / b8); without calibration data it declines.
    "-O3": f"cleanup,fuse,dce,{WEIGHT_ONLY},quantize-int8{{fallback=sensitivity,outlier_ratio=20}},trim-padded-keys",
    # Pruning may spend most of the run's --budget (shares are cumulative levels of the
    # cosine loss allowed, against the pipeline's input: heads down to 40% of it, heads and
    # FFN together down to 70%); recover then distills the pruned model back towards the
    # input on the calibration data, and int8 spends whatever of the budget is left after
    # recovery (its sensitivity fallback judges against the pipeline's input) — at least
    # the 30% pruning never touches, when there is no calibration data to recover on.
    # Without a budget the pruning passes decline (with the reason), recover has nothing to
    # recover, and this is -O3. Its int8 keeps an outlier split only where the budget needs it.
    # A decoder's int4 also keeps the layers its budget (ppl=, agree= or cos=) needs in float.
    "green": "cleanup,prune-heads{share=0.4},prune-ffn{share=0.7},recover,fuse,dce,"
             "quantize-weights{bits=4,accuracy_level=4,models=decoders,when=saves-energy,fallback=sensitivity},"
             "quantize-int8{fallback=sensitivity,outlier_ratio=20,outliers=as-needed},trim-padded-keys",
}


@dataclass(frozen=True)
class PassSpec:
    """One pipeline item: a pass name and the options written for it (as text)."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def steps(self) -> int:
        """How many times the manager may repeat this pass (``steps=N``, default 1)."""
        raw = dict(self.options).get("steps", "1")
        try:
            steps = int(raw)
        except ValueError:
            steps = 0
        if steps < 1:
            raise UsageError(f"pass '{self.name}': steps={raw} must be a positive integer")
        return steps

    def instantiate(self) -> Pass:
        """Build the registered pass with these options (``UsageError`` if invalid)."""
        cls = get_pass_class(self.name)
        options = {k: v for k, v in self.options if k not in MANAGER_OPTIONS}
        return cls(**options)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}{{{','.join(f'{k}={_quote(v)}' for k, v in self.options)}}}"


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of pass specs; ``str(Pipeline.parse(t))`` re-parses to the same."""

    items: tuple[PassSpec, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        """Parse pipeline text or a preset name (``-O0``, ``-O1``); ``UsageError`` if bad."""
        stripped = text.strip()
        if stripped in PRESETS:
            stripped = PRESETS[stripped]
        elif stripped.startswith("O") and "-" + stripped in PRESETS:
            stripped = PRESETS["-" + stripped]
        return cls(tuple(_Parser(stripped, original=text).items()))

    @classmethod
    def of(cls, value: str | Pipeline | list[Any]) -> Pipeline:
        """Accept pipeline text, a Pipeline, or a list of names / Pass instances."""
        if isinstance(value, Pipeline):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        items = []
        for entry in value:
            if isinstance(entry, Pass):
                items.append(PassSpec(entry.name, tuple((k, str(v)) for k, v in entry._explicit.items())))
            else:
                items.extend(cls.parse(str(entry)).items)
        return cls(tuple(items))

    def __str__(self) -> str:
        return ",".join(str(item) for item in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def _quote(value: str) -> str:
    if value == "" or any(ch in value for ch in ',{}="\\ '):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


class _Parser:
    def __init__(self, text: str, original: str) -> None:
        self.text = text
        self.original = original
        self.pos = 0

    def fail(self, what: str) -> UsageError:
        pointer = " " * self.pos + "^"
        return UsageError(
            f"bad pipeline text: {what} at column {self.pos + 1}\n  {self.text}\n  {pointer}",
            hint="write it as name{key=value,...},name2 — e.g. cleanup,fold-constants{max_size=1024}",
        )

    def items(self) -> list[PassSpec]:
        result: list[PassSpec] = []
        self.skip_space()
        if self.pos == len(self.text):
            return result
        while True:
            result.append(self.item())
            self.skip_space()
            if self.pos == len(self.text):
                return result
            if self.text[self.pos] != ",":
                raise self.fail("expected ',' between passes")
            self.pos += 1
            self.skip_space()

    def item(self) -> PassSpec:
        name = self.word()
        if not name:
            raise self.fail("expected a pass name")
        self.skip_space()
        options: list[tuple[str, str]] = []
        if self.pos < len(self.text) and self.text[self.pos] == "{":
            self.pos += 1
            self.skip_space()
            while self.pos < len(self.text) and self.text[self.pos] != "}":
                key = self.word()
                if not key:
                    raise self.fail("expected an option name")
                self.skip_space()
                if self.pos >= len(self.text) or self.text[self.pos] != "=":
                    raise self.fail(f"expected '=' after option '{key}'")
                self.pos += 1
                self.skip_space()
                value = self.value()
                if any(k == key for k, _ in options):
                    raise self.fail(f"option '{key}' given twice")
                options.append((key, value))
                self.skip_space()
                if self.pos < len(self.text) and self.text[self.pos] == ",":
                    self.pos += 1
                    self.skip_space()
                elif self.pos < len(self.text) and self.text[self.pos] != "}":
                    raise self.fail("expected ',' or '}'")
            if self.pos >= len(self.text):
                raise self.fail("missing '}'")
            self.pos += 1
        return PassSpec(name, tuple(options))

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "-_."):
            self.pos += 1
        return self.text[start : self.pos]

    def value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            self.pos += 1
            chars = []
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                chars.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                raise self.fail("unterminated quoted value")
            self.pos += 1
            return "".join(chars)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",}":
            self.pos += 1
        value = self.text[start : self.pos].strip()
        if not value:
            raise self.fail("expected a value")
        return value

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
