"""Calibration and verification data: :class:`CalibrationData`, an ordered set of feed dicts
built from arrays, an ``.npz``, feed dicts, a torch DataLoader, texts and a tokenizer, or
token sequences (decoder prefill feeds), and checked against a model's inputs before any
work. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from greencc.errors import SystemResourceError, UsageError
from greencc.model import Model, as_array, container_feed, native_byte_order

# Refuse calibration files (and in-memory datasets) larger than this before reading them.
MAX_CALIBRATION_BYTES = 4 << 30
# A decoder's KV-cache inputs are named past_key_values.{layer}.key / .value.
PAST_PREFIX = "past_key_values."
# The .npz array of task labels (one per sample) that a budget's acc= term is checked against.
LABELS_NAME = "labels"

Feeds = dict[str, np.ndarray]
T = TypeVar("T")


def track(items: Iterable[T], *, total: int | None = None, description: str = "calibrating",
          enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar on stderr when ``enabled`` and stderr is a
    terminal (never on CI or when piped); otherwise iterate plainly."""
    if not enabled or not sys.stderr.isatty() or os.environ.get("CI"):
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _batch_size_of(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in one feed dict: the leading dim of its first array with an axis (else 1)."""
    for array in feeds.values():
        if isinstance(array, np.ndarray) and array.ndim:
            return int(array.shape[0])
    return 1


class CalibrationData:
    """An ordered set of feed dicts (``{input name: array}``), one per batch.

    Iterating yields the feed dicts; ``len()`` counts samples (the leading dims of the
    batches), ``num_batches`` the feed dicts. Arrays are shared with the caller, never
    modified. ``progress=True`` shows a progress bar when iterating (and while building
    from a DataLoader or texts) on a terminal. Build it with ``from_arrays``,
    ``from_npz``, ``from_feeds``, ``from_dataloader`` or ``from_texts``, or let
    :func:`as_calibration` pick; :meth:`check` validates it against a model.
    """

    def __init__(self, feeds: Iterable[Mapping[str, Any]] = (), *, source: str = "in-memory",
                 progress: bool = False) -> None:
        batches: list[Feeds] = []
        for index, feed in enumerate(feeds):
            if not isinstance(feed, Mapping):
                raise UsageError(
                    f"calibration batch {index} is a {type(feed).__name__}, not a mapping of input name to array",
                    hint="give feed dicts such as {'input_ids': array, ...}",
                )
            batches.append({str(name): _to_numpy(value, name, sequences=True) for name, value in feed.items()})
        self._batches = batches
        self.source = source
        self.progress = progress
        nbytes = sum(_nbytes(a) for feed in batches for a in feed.values())
        if nbytes > MAX_CALIBRATION_BYTES:
            raise UsageError(
                f"calibration data from {source} holds {nbytes >> 20} MiB, over the "
                f"{MAX_CALIBRATION_BYTES >> 30} GiB limit",
                hint="use fewer samples (limit=...); a few hundred are enough to calibrate",
            )

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_feeds(cls, feeds: Iterable[Mapping[str, Any]], *, limit: int | None = None,
                   progress: bool = False, source: str = "feed dicts") -> CalibrationData:
        """From an iterable of feed dicts (one per batch), up to ``limit`` samples (the last
        batch is cut along axis 0 to fit)."""
        _check_limit(limit)
        batches: list[Feeds] = []
        samples = nbytes = 0
        total = len(feeds) if isinstance(feeds, Sized) else None
        for feed in track(feeds, total=total, description=f"reading {source}", enabled=progress):
            if limit is not None and samples >= limit:
                break
            if not isinstance(feed, Mapping):
                raise UsageError(
                    f"calibration batch {len(batches)} is a {type(feed).__name__}, not a mapping of input name to array",
                    hint="give feed dicts such as {'input_ids': array, ...}",
                )
            arrays = {str(name): _to_numpy(value, name, sequences=True) for name, value in feed.items()}
            size = _batch_size_of(arrays)
            if limit is not None and samples + size > limit:
                arrays = _head(arrays, limit - samples, size)
                size = limit - samples
            batches.append(arrays)
            samples += size
            nbytes += sum(_nbytes(a) for a in arrays.values())
            if nbytes > MAX_CALIBRATION_BYTES:  # stop reading a lazy source before memory runs out
                raise UsageError(
                    f"calibration data from {source} is over the {MAX_CALIBRATION_BYTES >> 30} GiB limit "
                    f"after {samples} samples",
                    hint="use fewer samples (limit=...); a few hundred are enough to calibrate",
                )
            if limit is not None and samples >= limit:
                break  # do not pull another batch from a lazy source
        return cls(batches, source=source, progress=progress)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], batch_size: int | None = None, *, model: Model | None = None,
                    limit: int | None = None, progress: bool = False,
                    source: str = "arrays") -> CalibrationData:
        """From one array per input with samples along axis 0, cut into batches of
        ``batch_size`` (the last may be smaller), up to ``limit`` samples.

        With ``model``, an array with one more axis than its input is read as one full
        feed per index (as in ``.npz`` files), e.g. for inputs without a batch axis, and
        ``batch_size`` defaults to the model's static batch dim (else 1).
        """
        if batch_size is None:
            batch_size = _static_batch(model) if model is not None else 1
        _check_batch_size(batch_size)
        _check_limit(limit)
        if not isinstance(arrays, Mapping) or not arrays:
            raise UsageError("calibration arrays must be a non-empty mapping of input name to array",
                             hint="e.g. {'x': np.zeros((64, 3, 32, 32), np.float32)}")
        named = {str(name): _to_numpy(value, name) for name, value in arrays.items()}
        ranks = {spec.name: len(spec.shape) for spec in model.inputs if spec.shape is not None} if model else {}
        stacked = {name: name in ranks and array.ndim == ranks[name] + 1 for name, array in named.items()}
        for name, array in named.items():
            if array.ndim == 0:
                raise UsageError(f"calibration array '{name}' is a scalar; samples go along axis 0",
                                 hint="stack the samples: np.stack([...])")
        counts = {name: array.shape[0] for name, array in named.items()}
        if len(set(counts.values())) != 1:
            raise UsageError(f"calibration arrays hold different numbers of samples along axis 0: {counts}",
                             hint="every input needs the same number of samples")
        total = next(iter(counts.values()))
        if limit is not None:
            total = min(total, limit)
        if all(stacked.values()):
            feeds = [{name: array[i] for name, array in named.items()} for i in range(total)]
            data = cls(feeds, source=source, progress=progress)
            return data if batch_size == 1 else data.rebatch(batch_size)
        if any(stacked.values()):
            raise UsageError(f"calibration arrays mix per-sample and per-feed layouts: {sorted(k for k, v in stacked.items() if v)} "
                             "have one axis more than their input, the others do not",
                             hint="give every array the same layout")
        feeds = [{name: array[start:start + batch_size] for name, array in named.items()}
                 for start in range(0, total, batch_size)]
        if feeds:
            last = feeds[-1]
            end = total - (len(feeds) - 1) * batch_size
            feeds[-1] = {name: array[:end] for name, array in last.items()}
        return cls(feeds, source=source, progress=progress)

    @classmethod
    def from_npz(cls, path: str | os.PathLike, model: Model, *, batch_size: int = 1,
                 limit: int | None = None, progress: bool = False) -> CalibrationData:
        """From an ``.npz`` whose arrays are named after the model's inputs, samples along
        axis 0 (see :func:`load_npz_samples`), in batches of ``batch_size``."""
        _check_batch_size(batch_size)
        samples = load_npz_samples(path, model, limit=limit)
        data = cls(samples, source=str(path), progress=progress)
        return data if batch_size == 1 else data.rebatch(batch_size)

    @classmethod
    def from_dataloader(cls, loader: Iterable[Any], input_names: Sequence[str], *,
                        limit: int | None = None, progress: bool = False) -> CalibrationData:
        """From a torch ``DataLoader`` (or any iterable of batches): dict batches give the
        arrays under ``input_names`` (other keys, such as labels, are ignored); tuple or
        list batches give their first ``len(input_names)`` items, in order. Tensors are
        copied to numpy on the CPU; up to ``limit`` samples."""
        names = [str(n) for n in ([input_names] if isinstance(input_names, str) else input_names)]
        if not names:
            raise UsageError("from_dataloader needs the model's input names", hint="e.g. input_names=['x']")

        def feeds() -> Iterator[Feeds]:
            for index, batch in enumerate(loader):
                if isinstance(batch, Mapping):
                    missing = [n for n in names if n not in batch]
                    if missing:
                        raise UsageError(
                            f"DataLoader batch {index} has no {missing} (keys: {sorted(map(str, batch))})",
                            hint="pass input_names that are keys of the batches",
                        )
                    yield {n: _to_numpy(batch[n], n) for n in names}
                elif isinstance(batch, (tuple, list)):
                    if len(batch) < len(names):
                        raise UsageError(
                            f"DataLoader batch {index} has {len(batch)} items, fewer than the inputs {names}",
                            hint="list one input name per leading item of the batch",
                        )
                    yield {n: _to_numpy(item, n) for n, item in zip(names, batch, strict=False)}
                elif len(names) == 1:
                    yield {names[0]: _to_numpy(batch, names[0])}
                else:
                    raise UsageError(
                        f"DataLoader batch {index} is a {type(batch).__name__}; with several inputs "
                        "batches must be dicts or tuples",
                        hint="return (x1, x2, ...) or {'x1': ..., 'x2': ...} from the dataset",
                    )

        total = len(loader) if isinstance(loader, Sized) else None
        batches = track(feeds(), total=total, description="reading DataLoader", enabled=progress)
        return cls.from_feeds(batches, limit=limit, source="DataLoader").with_progress(progress)

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer: Any, *, model: Model | None = None,
                   max_length: int | None = None, batch_size: int | None = None,
                   padding: str | None = None, limit: int | None = None,
                   progress: bool = False) -> CalibrationData:
        """From texts and a Hugging Face tokenizer, ``batch_size`` texts per batch.

        With ``model``, the batches hold exactly the model's inputs (``input_ids``,
        ``attention_mask``, ``token_type_ids`` ...) in the model's dtypes, a static
        sequence length sets ``max_length`` and padding to it, and a static batch dim sets
        ``batch_size``. Without one, every array the tokenizer returns, as int64.
        ``padding`` is ``"max_length"`` or ``"longest"`` (default: ``max_length`` when it
        is known, else the longest text of each batch); texts are truncated to
        ``max_length`` (default 128). For a decoder ``model`` (one with
        ``past_key_values.*`` inputs), the batches are prefill feeds: see
        :meth:`from_token_ids`.
        """
        _check_limit(limit)
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
            raise UsageError("from_texts needs a list of texts", hint="e.g. from_texts(['a sentence', ...], tokenizer)")
        texts = [str(t) for t in texts][:limit]
        if not callable(tokenizer):
            raise UsageError("tokenizer must be a Hugging Face tokenizer (callable on a list of texts)")
        if model is not None and is_decoder(model):
            encoded = [tokenizer(text, truncation=True, max_length=max_length or 128)["input_ids"] for text in texts]
            return cls.from_token_ids(encoded, model, batch_size=batch_size or 1, progress=progress,
                                      pad_id=getattr(tokenizer, "pad_token_id", None) or 0, source="texts")
        specs = {spec.name: spec for spec in model.inputs} if model is not None else {}
        static_seq = {spec.shape[1] for spec in specs.values()
                      if spec.shape is not None and len(spec.shape) >= 2 and isinstance(spec.shape[1], int)}
        if len(static_seq) == 1:
            (seq,) = static_seq
            if max_length is not None and max_length != seq:
                raise UsageError(f"max_length={max_length} but the model's sequence length is fixed at {seq}",
                                 hint=f"use max_length={seq}, or export the model with a dynamic sequence axis")
            max_length, padding = seq, padding or "max_length"
        if batch_size is None:
            batch_size = _static_batch(model) if model is not None else 1
        _check_batch_size(batch_size)
        if padding not in (None, "max_length", "longest"):
            raise UsageError(f"padding='{padding}' is not supported", hint="use 'max_length' or 'longest'")
        length = max_length or 128
        padding = padding or ("max_length" if max_length is not None else "longest")

        def feeds() -> Iterator[Feeds]:
            for start in range(0, len(texts), batch_size):
                encoded = tokenizer(texts[start:start + batch_size], padding=padding, truncation=True,
                                    max_length=length, return_tensors="np")
                produced = {str(k): np.asarray(v) for k, v in dict(encoded).items()}
                if not specs:
                    yield {k: v.astype(np.int64) if v.dtype.kind in "iub" else v for k, v in produced.items()}
                    continue
                missing = [name for name in specs if name not in produced]
                if missing:
                    raise UsageError(
                        f"the tokenizer does not produce the model input(s) {missing} (it gives {sorted(produced)})",
                        hint="build the calibration feeds yourself and use CalibrationData.from_feeds",
                    )
                yield {name: _cast(produced[name], spec.dtype) for name, spec in specs.items()}

        batches = track(feeds(), total=-(-len(texts) // batch_size), description="tokenizing", enabled=progress)
        return cls.from_feeds(batches, source="texts").with_progress(progress)

    @classmethod
    def from_token_ids(cls, sequences: Iterable[Sequence[int] | np.ndarray], model: Model, *,
                       batch_size: int = 1, pad_id: int = 0, progress: bool = False,
                       source: str = "token ids") -> CalibrationData:
        """Prefill feeds of a decoder ``model`` from token sequences, ``batch_size`` per
        batch: ``input_ids`` left-padded with ``pad_id`` to the longest of the batch,
        ``attention_mask`` (1 attend, 0 padding), ``position_ids`` counting the unpadded
        tokens from 0, and empty past tensors (``past_seq`` = 0) shaped from the model's
        ``past_key_values.*`` inputs. Raises ``UsageError`` for an empty sequence or a
        model that is not a decoder."""
        _check_batch_size(batch_size)
        if not is_decoder(model):
            raise UsageError("from_token_ids builds decoder prefill feeds, but the model has no "
                             "input_ids and past_key_values.* inputs",
                             hint="for other models use from_texts or from_arrays")
        rows = [np.asarray(seq, dtype=np.int64).ravel() for seq in sequences]
        if any(row.size == 0 for row in rows):
            raise UsageError("from_token_ids got an empty token sequence", hint="drop empty texts first")
        feeds = [decoder_prefill(model, rows[start:start + batch_size], pad_id)
                 for start in range(0, len(rows), batch_size)]
        return cls.from_feeds(feeds, source=source).with_progress(progress)

    # -- container protocol ----------------------------------------------------------------
    def __iter__(self) -> Iterator[Feeds]:
        return track(iter(self._batches), total=len(self._batches), enabled=self.progress)

    def __len__(self) -> int:
        """Number of samples (sum of the batches' leading dims)."""
        return sum(_batch_size_of(feed) for feed in self._batches)

    def __bool__(self) -> bool:
        return bool(self._batches)

    @property
    def num_batches(self) -> int:
        """Number of feed dicts (batches)."""
        return len(self._batches)

    def batches(self) -> list[Feeds]:
        """The feed dicts, in order (a new list; the arrays are shared)."""
        return list(self._batches)

    @property
    def input_names(self) -> list[str]:
        """Input names of the first batch (empty when there is none)."""
        return list(self._batches[0]) if self._batches else []

    def limit(self, samples: int) -> CalibrationData:
        """The first ``samples`` samples (the last batch cut along axis 0 to fit)."""
        return CalibrationData.from_feeds(self._batches, limit=samples, source=self.source).with_progress(self.progress)

    def with_progress(self, progress: bool = True) -> CalibrationData:
        """The same batches, iterating with (or without) a progress bar."""
        data = CalibrationData.__new__(CalibrationData)
        data._batches, data.source, data.progress = self._batches, self.source, progress
        return data

    def rebatch(self, batch_size: int) -> CalibrationData:
        """The same samples, in order, regrouped into batches of ``batch_size`` along axis 0
        (the last may be smaller). Raises ``UsageError`` when batches cannot be
        concatenated (different trailing shapes or dtypes, or no batch axis)."""
        _check_batch_size(batch_size)
        if not self._batches:
            return self.with_progress(self.progress)
        names = list(self._batches[0])
        for index, feed in enumerate(self._batches):
            if list(feed) != names:
                raise UsageError(f"calibration batch {index} has inputs {list(feed)}, batch 0 has {names}")
        merged: dict[str, np.ndarray] = {}
        for name in names:
            parts = [feed[name] for feed in self._batches]
            trailing = {(p.shape[1:], p.dtype.name) for p in parts if p.ndim}
            if any(p.ndim == 0 for p in parts) or len(trailing) != 1:
                raise UsageError(
                    f"cannot rebatch input '{name}': its batches have shapes/dtypes "
                    f"{sorted({(p.shape, p.dtype.name) for p in parts})}",
                    hint="rebatching needs a leading batch axis and equal trailing dims "
                         "(pad texts to a fixed length: padding='max_length')",
                )
            merged[name] = np.concatenate(parts, axis=0)
        sizes = {name: array.shape[0] for name, array in merged.items()}
        if len(set(sizes.values())) != 1:
            raise UsageError(f"cannot rebatch: inputs hold different numbers of samples {sizes}")
        return CalibrationData.from_arrays(merged, batch_size, source=self.source, progress=self.progress)

    # -- validation ------------------------------------------------------------------------
    def check(self, model: Model) -> CalibrationData:
        """Validate every batch against ``model``'s inputs; returns ``self``.

        Raises ``UsageError`` naming the batch and the problem, with the fix: an empty
        dataset, unknown or missing input names, a wrong dtype, a wrong rank or a static
        dim that differs, symbolic dims that disagree between inputs of one batch, NaN or
        inf in a float input. Nothing is modified or converted.
        """
        specs = {spec.name: spec for spec in model.inputs}
        signature = ", ".join(str(s) for s in specs.values())
        if not self._batches:
            raise UsageError(f"calibration data from {self.source} is empty",
                             hint=f"give at least one sample for the inputs {signature}")
        for index, feed in enumerate(self._batches):
            where = f"calibration batch {index} ({self.source})"
            unknown = sorted(set(feed) - set(specs))
            if unknown:
                raise UsageError(f"{where}: unknown input name(s) {unknown}",
                                 hint=f"name the arrays after the model's inputs: {signature}")
            missing = [name for name in specs if name not in feed]
            if missing:
                raise UsageError(f"{where}: missing input(s) {missing}",
                                 hint=f"the model's inputs are {signature}")
            bound: dict[str, tuple[str, int]] = {}
            for name, spec in specs.items():
                array = feed[name]
                if spec.container != "tensor":
                    _, problem = container_feed(spec, array)
                    if problem is not None:
                        raise UsageError(f"{where}: {problem}", hint=f"the model's inputs are {signature}")
                    continue
                if not isinstance(array, np.ndarray):
                    raise UsageError(f"{where}: input '{name}' is a {type(array).__name__}, the model wants "
                                     f"one tensor ({spec})", hint="give one array (np.stack a list of arrays)")
                text = spec.dtype == "object" and array.dtype.kind in "OU"
                if spec.dtype != "unknown" and array.dtype.name != spec.dtype and not text:
                    raise UsageError(
                        f"{where}: input '{name}' has dtype {array.dtype.name}, the model wants {spec.dtype}",
                        hint=f"convert it: array.astype(np.{spec.dtype})",
                    )
                if spec.shape is not None:
                    if array.ndim != len(spec.shape):
                        raise UsageError(
                            f"{where}: input '{name}' has rank {array.ndim} (shape {list(array.shape)}), "
                            f"the model wants rank {len(spec.shape)} ({spec})",
                            hint="samples go along axis 0 of each batch; add or remove axes to match",
                        )
                    for axis, (dim, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
                        if isinstance(dim, int) and dim != got:
                            raise UsageError(
                                f"{where}: input '{name}' has shape {list(array.shape)}, the model fixes "
                                f"axis {axis} at {dim} ({spec})",
                                hint="only the symbolic (named) dims may vary; pad or batch to the fixed size",
                            )
                        if isinstance(dim, str) and dim:
                            other = bound.setdefault(dim, (name, got))
                            if other[1] != got:
                                raise UsageError(
                                    f"{where}: dim '{dim}' is {other[1]} in input '{other[0]}' but {got} in '{name}'",
                                    hint="every input of one batch must agree on shared dims",
                                )
                if array.dtype.kind in "fc" and not np.isfinite(array).all():
                    bad = int(np.isnan(array).sum())
                    kind = f"{bad} NaN" if bad else f"{int(np.isinf(array).sum())} inf"
                    raise UsageError(f"{where}: input '{name}' contains {kind} value(s)",
                                     hint="clean the data; calibration needs finite inputs")
        return self

    def __repr__(self) -> str:
        return f"<CalibrationData {len(self)} samples in {self.num_batches} batches from {self.source}>"


def as_calibration(value: Any, model: Model | None = None) -> CalibrationData:
    """``value`` as :class:`CalibrationData`: a CalibrationData (returned as is), a path to
    an ``.npz`` (needs ``model``), a mapping of arrays with samples along axis 0 (see
    ``from_arrays``), or an iterable of feed dicts (what ``compile(calibration=[...])`` and
    ``PassContext.calibration`` carry). Raises ``UsageError`` for ``None`` or anything else.
    It does not validate against the model: call ``.check(model)``."""
    if isinstance(value, CalibrationData):
        return value
    if value is None:
        raise UsageError("no calibration data given",
                         hint="pass calibration=CalibrationData.from_...(...) or a list of feed dicts, or --calib FILE.npz")
    if isinstance(value, (str, os.PathLike)):
        if model is None:
            raise UsageError(f"reading calibration file {value} needs the model", hint="call as_calibration(path, model)")
        return CalibrationData.from_npz(value, model)
    if isinstance(value, Mapping):
        return CalibrationData.from_arrays(value, model=model)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, np.ndarray)):
        return CalibrationData.from_feeds(value)
    raise UsageError(
        f"cannot use a {type(value).__name__} as calibration data",
        hint="give a CalibrationData, a list of feed dicts, a mapping of arrays or a path to an .npz",
    )


def is_decoder(model: Model) -> bool:
    """Whether ``model`` has the decoder signature: ``input_ids`` and ``past_key_values.*``
    inputs."""
    names = {spec.name for spec in model.inputs}
    return "input_ids" in names and any(name.startswith(PAST_PREFIX) for name in names)


def decoder_prefill(model: Model, sequences: Sequence[np.ndarray], pad_id: int = 0) -> Feeds:
    """One prefill feed dict of a decoder for ``sequences`` (1-D int arrays), left-padded
    to the longest (see :meth:`CalibrationData.from_token_ids`); inputs the model does not
    take are left out."""
    length = max(len(row) for row in sequences)
    ids = np.full((len(sequences), length), pad_id, np.int64)
    mask = np.zeros((len(sequences), length), np.int64)
    for index, row in enumerate(sequences):
        ids[index, length - len(row):] = row
        mask[index, length - len(row):] = 1
    feeds: Feeds = {"input_ids": ids, "attention_mask": mask,
                    "position_ids": np.maximum(np.cumsum(mask, axis=1) - 1, 0)}
    specs = {spec.name: spec for spec in model.inputs}
    for name, spec in specs.items():
        if not name.startswith(PAST_PREFIX):
            continue
        if spec.shape is None or len(spec.shape) != 4 or not all(isinstance(d, int) for d in (spec.shape[1], spec.shape[3])):
            raise UsageError(f"decoder input '{name}' is not [batch, kv_heads, past_seq, head_dim] with static "
                             f"heads and head size ({spec})", hint="export the decoder with greencc.from_pretrained")
        dtype = spec.dtype if spec.dtype != "unknown" else "float32"
        feeds[name] = np.zeros((len(sequences), spec.shape[1], 0, spec.shape[3]), dtype)
    return {name: array.astype(specs[name].dtype) if specs[name].dtype not in ("unknown", array.dtype.name) else array
            for name, array in feeds.items() if name in specs}


def load_npz_samples(path: str | os.PathLike, model: Model, *, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Feed dicts from an ``.npz``: one array per model input, samples along axis 0.

    An array with the input's rank is split into batch-1 samples; one with an extra leading
    axis gives one full feed per index. A ``labels`` array (when no input has that name) is
    not a feed: :func:`load_npz_labels` reads it. Raises ``UsageError`` naming a missing, unknown or
    mismatched array (see :meth:`CalibrationData.check`); ``allow_pickle`` is always off,
    and every member's ``.npy`` header is read and bounded before any array data is (see
    :func:`_check_npz_members`).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"calibration file {path} does not exist")
    if path.stat().st_size > MAX_CALIBRATION_BYTES:
        raise UsageError(f"calibration file {path} is over {MAX_CALIBRATION_BYTES >> 30} GiB")
    _check_npz_members(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{path} holds one array, not an .npz archive of named arrays",
                         hint="save it with np.savez(path, input_name=array, ...)")
    with archive:
        specs = {spec.name: spec for spec in model.inputs}
        names = set(archive.files) - ({LABELS_NAME} - set(specs))
        if names != set(specs):
            raise UsageError(
                f"{path}: arrays {sorted(names)} do not match the model's inputs {sorted(specs)}",
                hint="name each array after a model input: np.savez(path, **{name: array})",
            )
        try:
            arrays = {name: archive[name] for name in specs}
        except ValueError as exc:  # object arrays would need pickle
            raise UsageError(f"{path}: {exc}", hint="store plain numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise UsageError(f"{path} is corrupt: {exc}", hint="write it again with np.savez") from None
    counts = set()
    per_sample: dict[str, list[np.ndarray]] = {}
    for name, spec in specs.items():
        array = arrays[name]
        rank = len(spec.shape or ())
        if array.ndim == rank and rank > 0:
            per_sample[name] = [array[i : i + 1] for i in range(array.shape[0])]
        elif array.ndim == rank + 1:
            per_sample[name] = [array[i] for i in range(array.shape[0])]
        else:
            raise UsageError(f"{path}: array '{name}' has rank {array.ndim}, the input has rank {rank}",
                             hint="store samples along axis 0, with the input's rank or one more axis")
        counts.add(len(per_sample[name]))
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"{path}: arrays hold different or zero numbers of samples ({sorted(counts)})",
                         hint="every array needs the same, non-zero number of samples along axis 0")
    count = counts.pop() if limit is None else min(counts.pop(), limit)
    samples = [{name: per_sample[name][i] for name in specs} for i in range(count)]
    CalibrationData(samples, source=str(path)).check(model)
    return samples


def load_npz_labels(path: str | os.PathLike, model: Model) -> np.ndarray | None:
    """The ``labels`` array of a calibration ``.npz`` (integer class ids, one per sample
    along axis 0, in the samples' order), or ``None`` when it has none or a model input is
    named ``labels``. Read like the samples (see :func:`load_npz_samples`, which checks the
    file): no pickle, headers bounded first. ``UsageError`` when the labels are not integers."""
    if LABELS_NAME in {spec.name for spec in model.inputs}:
        return None
    path = Path(path)
    _check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if LABELS_NAME not in archive.files:
                return None
            labels = archive[LABELS_NAME]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}") from None
    if labels.dtype.kind not in "iu" or labels.ndim == 0:
        raise UsageError(f"{path}: 'labels' is a {labels.dtype} array of shape {list(labels.shape)}, "
                         "not integer class ids with samples along axis 0",
                         hint="store one integer label per sample: np.savez(path, ..., labels=np.array([...], np.int64))")
    return labels


def _check_npz_members(path: Path) -> None:
    """Bound an ``.npz`` by what its members' ``.npy`` headers declare, before any array
    data is read: every member must be an ``.npy`` array of numbers or text whose declared
    size (elements x item bytes) is the size it stores, and the total must fit both
    :data:`MAX_CALIBRATION_BYTES` (``UsageError``) and the memory available now
    (``SystemResourceError``). A zip directory can lie about sizes; a member is read only
    up to the size its header declares."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                total += _npy_member_nbytes(path, archive, info)
                if total > MAX_CALIBRATION_BYTES:
                    raise UsageError(f"calibration file {path} unpacks to {total >> 20} MiB or more, over "
                                     f"{MAX_CALIBRATION_BYTES >> 30} GiB", hint="use fewer samples")
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}",
                         hint="write it with np.savez(path, input_name=array, ...)") from None
    available = _available_memory_bytes()
    if available is not None and total > available:
        raise SystemResourceError(f"calibration file {path} holds {total >> 20} MiB of arrays and only "
                                  f"{available >> 20} MiB of memory is available",
                                  hint="use fewer samples, or free some memory")


def _npy_member_nbytes(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Bytes of array data the ``.npy`` member ``info`` declares, checked against what it
    stores; ``UsageError`` for a member that is not a plain ``.npy`` array."""
    where = f"{path}: member '{info.filename}'"
    if not info.filename.endswith(".npy"):
        raise UsageError(f"{where} is not an .npy array",
                         hint="an .npz holds only arrays: write it with np.savez(path, input_name=array, ...)")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        except (ValueError, SyntaxError, TypeError) as exc:
            raise UsageError(f"{where} has no valid .npy header: {exc}",
                             hint="write the file again with np.savez") from None
        header_bytes = member.tell()
    if dtype.hasobject or dtype.kind not in "biufcU":
        raise UsageError(f"{where} has dtype {dtype}, not numbers or text",
                         hint="store plain numeric arrays (object arrays would need pickle, which is never used)")
    if any(dim < 0 for dim in shape):
        raise UsageError(f"{where} declares the negative shape {list(shape)}", hint="write the file again with np.savez")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_bytes + nbytes != info.file_size:
        raise UsageError(f"{where} declares {nbytes} bytes of {dtype} {list(shape)} but stores "
                         f"{info.file_size - header_bytes}", hint="the file is corrupt: write it again with np.savez")
    return nbytes


def _available_memory_bytes() -> int | None:
    """Memory the kernel can hand out now without swapping (``MemAvailable`` of
    ``/proc/meminfo``), in bytes; None where the platform does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _to_numpy(value: Any, name: Any, *, sequences: bool = False) -> Any:
    """A numpy array from an array, a torch tensor (copied to the CPU) or a nested list.

    With ``sequences`` (a feed dict's value), a list or tuple of arrays or tensors is a
    sequence input's feed (returned as a list of arrays) and None an empty optional input's.
    Numeric arrays and text (str arrays, object arrays of str) are accepted.
    """
    if sequences:
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and all(isinstance(v, np.ndarray) or _is_torch(v) for v in value):
            return [_to_numpy(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if _is_torch(value):
        value = value.detach().cpu().numpy()
    array = as_array(value)
    if array is None:
        raise UsageError(f"calibration input '{name}' is a ragged nested list, not an array",
                         hint="give one array per input (a list of arrays for a sequence input)")
    text = array.dtype.kind == "U" or (array.dtype.kind == "O" and all(isinstance(v, str) for v in array.flat))
    if array.dtype.kind not in "biufc" and not text:
        raise UsageError(f"calibration input '{name}' has dtype {array.dtype}, not a numeric array",
                         hint="store plain numeric arrays (or text for string inputs)")
    return native_byte_order(array)


def _is_torch(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (told without importing torch)."""
    return hasattr(value, "detach") and hasattr(value, "cpu")


def _nbytes(value: Any) -> int:
    """Bytes held by a feed: an array, a sequence's arrays, or nothing (None)."""
    if value is None:
        return 0
    if isinstance(value, list):
        return sum(a.nbytes for a in value)
    return int(value.nbytes)


def _static_batch(model: Model) -> int:
    """The batch size a model fixes: its inputs' common static leading dim, else 1."""
    leading = {spec.shape[0] if spec.shape else None for spec in model.inputs}
    (dim,) = leading if len(leading) == 1 else (None,)
    return dim if isinstance(dim, int) and dim > 0 else 1


def _cast(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "unknown" or array.dtype.name == dtype:
        return array
    return array.astype(dtype)


def _head(arrays: Feeds, count: int, size: int) -> Feeds:
    """The first ``count`` samples of a batch of ``size``: arrays whose leading dim is the
    batch size are cut, others (no batch axis) kept whole."""
    return {name: a[:count] if isinstance(a, np.ndarray) and a.ndim and a.shape[0] == size else a
            for name, a in arrays.items()}


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UsageError(f"batch_size={batch_size!r} must be a positive integer")


def _check_limit(limit: Any) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise UsageError(f"limit={limit!r} must be a non-negative integer (samples)")
