"""Calibration and verification data from files: an ``.npz`` whose arrays are named after
the model's inputs. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from greencc.errors import UsageError
from greencc.model import Model

# Refuse calibration files larger than this before reading them into memory.
MAX_CALIBRATION_BYTES = 4 << 30


def load_npz_samples(path: str | os.PathLike, model: Model, *, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Feed dicts from an ``.npz``: one array per model input, samples along axis 0.

    An array with the input's rank is split into batch-1 samples; one with an extra leading
    axis gives one full feed per index. Raises ``UsageError`` naming a missing, unknown or
    mismatched array; ``allow_pickle`` is always off.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"calibration file {path} does not exist")
    if path.stat().st_size > MAX_CALIBRATION_BYTES:
        raise UsageError(f"calibration file {path} is over {MAX_CALIBRATION_BYTES >> 30} GiB")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{path} holds one array, not an .npz archive of named arrays",
                         hint="save it with np.savez(path, input_name=array, ...)")
    with archive:
        specs = {spec.name: spec for spec in model.inputs}
        names = set(archive.files)
        if names != set(specs):
            raise UsageError(
                f"{path}: arrays {sorted(names)} do not match the model's inputs {sorted(specs)}",
                hint="name each array after a model input: np.savez(path, **{name: array})",
            )
        try:
            arrays = {name: archive[name] for name in specs}
        except ValueError as exc:  # object arrays would need pickle
            raise UsageError(f"{path}: {exc}", hint="store plain numeric arrays") from None
    counts = set()
    per_sample: dict[str, list[np.ndarray]] = {}
    for name, spec in specs.items():
        array = arrays[name]
        if array.dtype.name != spec.dtype:
            raise UsageError(f"{path}: array '{name}' is {array.dtype.name}, the model wants {spec.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UsageError(f"{path}: array '{name}' contains NaN or inf")
        rank = len(spec.shape or ())
        if array.ndim == rank:
            per_sample[name] = [array[i : i + 1] for i in range(array.shape[0])]
        elif array.ndim == rank + 1:
            per_sample[name] = [array[i] for i in range(array.shape[0])]
        else:
            raise UsageError(f"{path}: array '{name}' has rank {array.ndim}, the input has rank {rank}")
        counts.add(len(per_sample[name]))
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"{path}: arrays hold different or zero numbers of samples ({sorted(counts)})")
    count = counts.pop() if limit is None else min(counts.pop(), limit)
    samples = [{name: per_sample[name][i] for name in specs} for i in range(count)]
    for feeds in samples:
        model.check_feeds(feeds)
    return samples
