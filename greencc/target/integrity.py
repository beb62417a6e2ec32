"""Artifact integrity: the SHA-256 of every file an artifact holds, recorded in its
manifest when it is saved and checked before anything in it is read, mapped or loaded.

An artifact can hold a shared library (``model.so`` of the TVM targets) that loading runs,
so it is code, like a pickle. The hashes catch a file changed, swapped, truncated, added
or removed after saving; they are not a signature (whoever can rewrite the files can
rewrite the manifest too), so only artifacts from a trusted source should be loaded.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greencc.errors import ModelLoadError

HASHES_KEY = "sha256"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20
# ELF, Mach-O (32/64-bit, both byte orders, universal) and PE headers.
_LIBRARY_MAGICS = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                   b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"MZ")
_LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")
_TRUST_HINT = "only load artifacts from a source you trust (loading one can run its code); compile again"


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` as 64 lowercase hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(directory: Path, exclude: str) -> dict[str, str]:
    """File name -> SHA-256 of every file in ``directory`` but ``exclude`` (the manifest)."""
    return {
        entry.name: file_sha256(entry)
        for entry in sorted(directory.iterdir())
        if entry.name != exclude and entry.is_file()
    }


def digest_problems(recorded: Any) -> str:
    """Why a manifest's ``sha256`` record is malformed ("" when it is a name -> hex map)."""
    if not isinstance(recorded, dict):
        return f"'{HASHES_KEY}' is not an object of file name -> SHA-256"
    for name, digest in recorded.items():
        if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
            return f"the SHA-256 recorded for {name!r} is not 64 lowercase hex digits"
    return ""


def verify_artifact_files(directory: Path, manifest: Mapping[str, Any], *, manifest_name: str,
                          listed: set[str]) -> None:
    """Check that ``directory`` holds exactly the files whose SHA-256 ``manifest`` records,
    each with its recorded hash, before any of them is opened by a target.

    ``listed`` are the names the manifest refers to elsewhere (target files, report,
    tokenizer); each must be hashed. Raises ``ModelLoadError`` naming the files that are
    missing, unexpected or changed. An artifact saved before hashes were recorded loads
    with a warning, unless it holds a shared library: that is refused (nothing can tell
    whether the library is the one greencc wrote, and loading it runs it).
    """
    present = {entry.name for entry in directory.iterdir()} - {manifest_name}
    recorded = manifest.get(HASHES_KEY)
    if recorded is None:
        _check_unhashed(directory, present)
        return
    missing = sorted((listed | set(recorded)) - present)
    if missing:
        raise ModelLoadError(f"{directory}: missing artifact {_names(missing)}",
                             hint="the artifact is incomplete; compile again")
    unhashed = sorted(listed - set(recorded))
    if unhashed:
        raise ModelLoadError(f"{directory}/{manifest_name} has no SHA-256 for {_names(unhashed)}",
                             hint=f"the manifest was edited; {_TRUST_HINT}")
    extra = sorted(present - set(recorded))
    if extra:
        raise ModelLoadError(f"{directory}: unexpected {_names(extra)}: the manifest records no such "
                             "file", hint=f"remove it, or compile again; {_TRUST_HINT}")
    for name, expected in sorted(recorded.items()):
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file", hint="the artifact is corrupt; compile again")
        if file_sha256(path) != expected:
            raise ModelLoadError(
                f"{path} does not match the SHA-256 recorded in {manifest_name}: it was changed, "
                "swapped or truncated after saving",
                hint=_TRUST_HINT,
            )


def _names(names: list[str]) -> str:
    quoted = ", ".join(f"'{name}'" for name in names)
    return f"file {quoted}" if len(names) == 1 else f"files {quoted}"


def _check_unhashed(directory: Path, present: set[str]) -> None:
    libraries = sorted(name for name in present if _is_shared_library(directory / name))
    if libraries:
        raise ModelLoadError(
            f"{directory} was saved before greencc recorded file hashes and holds a shared library "
            f"({', '.join(libraries)}): loading it would run code that nothing can check",
            hint="compile the model again with this greencc",
        )
    warnings.warn(
        f"{directory} was saved before greencc recorded file hashes: its files load unchecked "
        "(save the loaded model again to record them)",
        UserWarning, stacklevel=4,
    )


def _is_shared_library(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix in _LIBRARY_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(4)
    return head.startswith(_LIBRARY_MAGICS)
