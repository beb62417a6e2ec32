"""The search store: one SQLite file (``search.db`` in the search directory) holding every
finished candidate, keyed by its :class:`~greencc.config.CompileConfig` digest, so a rerun
resumes without compiling anything already done. Only the search's driver writes it, one
transaction per event, so a killed or interrupted search leaves it consistent.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STORE_NAME = "search.db"

# status: what became of a candidate.
SCREENED = "screened"      # the cost-model screen discarded it before compiling
BROKE_BUDGET = "broke-budget"  # a lossy pass broke the fidelity budget: stopped early
FAILED = "failed"          # the compile raised (the error is kept)
COMPILED = "compiled"      # compiled and verified; not measured (dominated on estimates)
MEASURED = "measured"      # compiled, verified and measured
FINISHED = (SCREENED, BROKE_BUDGET, FAILED, COMPILED, MEASURED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    digest TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    est_energy_mj REAL,
    est_latency_ms REAL,
    fidelity REAL,
    model_bytes INTEGER,
    measured_latency_ms REAL,
    measured_energy_mj REAL,
    energy_label TEXT,
    artifact TEXT,
    broken_prefix TEXT,
    compile_node TEXT,
    compile_start REAL,
    compile_s REAL,
    measure_node TEXT,
    measure_start REAL,
    measure_end REAL,
    load_before REAL,
    load_after REAL,
    finished REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# The nullable columns of the candidates table, by name: the ones a store written by an
# older greencc may lack.
_COLUMNS = dict(re.findall(r"^    (\w+) (TEXT|REAL|INTEGER),$", _SCHEMA, flags=re.MULTILINE))


@dataclass
class Candidate:
    """One finished candidate. Units: mJ and ms per inference, bytes, seconds; times are
    Unix seconds (``compile_start`` on the compiling worker's clock); ``load_before`` /
    ``load_after`` the node's 1-minute load average when its measurement began and ended;
    ``fidelity`` the minimum cosine similarity to the original model's outputs (for a
    candidate that broke the budget, the one the breaking pass reached);
    ``artifact`` the saved artifact directory (with its ledger, report.json and
    report.html); ``broken_prefix`` the pipeline up to the pass that broke the budget."""

    digest: str
    params: dict[str, Any]
    config: dict[str, Any]
    status: str
    reason: str | None = None
    est_energy_mj: float | None = None
    est_latency_ms: float | None = None
    fidelity: float | None = None
    model_bytes: int | None = None
    measured_latency_ms: float | None = None
    measured_energy_mj: float | None = None
    energy_label: str | None = None
    artifact: str | None = None
    broken_prefix: str | None = None
    compile_node: str | None = None
    compile_start: float | None = None
    compile_s: float | None = None
    measure_node: str | None = None
    measure_start: float | None = None
    measure_end: float | None = None
    load_before: float | None = None
    load_after: float | None = None
    finished: float = field(default_factory=time.time)
    seq: int = 0

    @property
    def pipeline(self) -> str:
        """The candidate's pipeline text."""
        return str(self.config.get("pipeline", ""))

    @property
    def latency_ms(self) -> float | None:
        """Measured median latency (ms) where measured, else the estimate."""
        return self.measured_latency_ms if self.measured_latency_ms is not None else self.est_latency_ms

    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-safe dict."""
        return asdict(self)


class CandidateStore:
    """The SQLite store of a search directory (created when missing)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / STORE_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def close(self) -> None:
        """Close the database (every write is already committed)."""
        self._db.close()

    def __enter__(self) -> CandidateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, digest: str) -> Candidate | None:
        """The finished candidate of a config digest, or None."""
        row = self._db.execute("SELECT * FROM candidates WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else self._candidate(row)

    def put(self, candidate: Candidate) -> None:
        """Record a finished candidate in one transaction (replacing an earlier row)."""
        values = candidate.to_dict()
        values["params"] = json.dumps(values["params"], sort_keys=True)
        values["config"] = json.dumps(values["config"], sort_keys=True)
        with self._transaction():
            if not values["seq"]:
                values["seq"] = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM candidates").fetchone()[0]
                candidate.seq = values["seq"]
            names = ", ".join(values)
            marks = ", ".join(f":{name}" for name in values)
            self._db.execute(f"INSERT OR REPLACE INTO candidates ({names}) VALUES ({marks})", values)

    def candidates(self) -> list[Candidate]:
        """Every finished candidate, in the order they finished."""
        return [self._candidate(row) for row in self._db.execute("SELECT * FROM candidates ORDER BY seq")]

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates())

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])

    def set_meta(self, values: Mapping[str, Any]) -> None:
        """Record the search's settings (space, budget, objective) as JSON values."""
        with self._transaction():
            for key, value in values.items():
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self) -> dict[str, Any]:
        """The recorded settings."""
        return {key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM meta")}

    def _add_missing_columns(self) -> None:
        """Bring a store written before a column existed up to the schema (the new column
        empty in its old rows)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(candidates)")}
        for name, column_type in _COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE candidates ADD COLUMN {name} {column_type}")

    def _transaction(self) -> Any:
        return _Transaction(self._db)

    def _candidate(self, row: tuple[Any, ...]) -> Candidate:
        names = [column[0] for column in self._db.execute("SELECT * FROM candidates LIMIT 0").description]
        values = dict(zip(names, row, strict=True))
        values["params"] = json.loads(values["params"])
        values["config"] = json.loads(values["config"])
        return Candidate(**values)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back when the body raises (Ctrl-C included)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
