"""Grid carbon-intensity signals a carbon policy reads at run time (gCO2e/kWh): a fixed
number, a file (rewritten by any tool), an HTTP endpoint, or CodeCarbon's offline table
for a location.

A file or endpoint holds a number or a JSON object with ``g_per_kwh`` (or Electricity
Maps' ``carbonIntensity``). CodeCarbon's tables hold one yearly figure per country or
region, so a table signal is the same at every hour of the day.
"""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Protocol

from greencc.errors import UsageError
from greencc.measure.grid import lookup_grid_intensity

_KEYS = ("g_per_kwh", "carbonIntensity", "carbon_intensity")
# A signal file or response larger than this is not an intensity reading.
_MAX_BYTES = 64 << 10


class CarbonSignal(Protocol):
    """A source of the grid's carbon intensity; ``read()`` returns gCO2e/kWh."""

    def read(self) -> float:
        """The intensity now, gCO2e/kWh (raises ``UsageError`` when unreadable)."""
        ...

    def describe(self) -> str:
        """Where the figure comes from."""
        ...


class ConstantSignal:
    """A fixed intensity (gCO2e/kWh)."""

    def __init__(self, g_per_kwh: float) -> None:
        self.g_per_kwh = _valid(g_per_kwh, "the constant signal")

    def read(self) -> float:
        """The fixed figure, gCO2e/kWh."""
        return self.g_per_kwh

    def describe(self) -> str:
        """``constant 300 gCO2e/kWh``."""
        return f"constant {self.g_per_kwh:g} gCO2e/kWh"


class FileSignal:
    """The intensity written in a file, re-read when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._value: float | None = None

    def read(self) -> float:
        """The file's figure, gCO2e/kWh."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise UsageError(f"cannot read the carbon signal file {self.path}: {exc.strerror}",
                             hint="write a number of gCO2e/kWh into it") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp or self._value is None:
            if stat.st_size > _MAX_BYTES:
                raise UsageError(f"the carbon signal file {self.path} is {stat.st_size} bytes: not a reading")
            self._value = parse_reading(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = stamp
        return self._value

    def describe(self) -> str:
        """``file /path``."""
        return f"file {self.path}"


class HttpSignal:
    """The intensity an HTTP(S) endpoint returns (GET, ``timeout_s`` seconds)."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"carbon signal URL {url!r} must start with http:// or https://")
        self.url = url
        self.timeout_s = timeout_s

    def read(self) -> float:
        """The endpoint's figure, gCO2e/kWh."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
                text = response.read(_MAX_BYTES + 1).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the carbon signal at {self.url}: {exc}") from None
        return parse_reading(text, self.url)

    def describe(self) -> str:
        """``http URL``."""
        return f"http {self.url}"


class TableSignal:
    """A location's yearly intensity from CodeCarbon's offline tables (the same at every
    hour: the tables hold no hourly profile)."""

    def __init__(self, location: str) -> None:
        self.grid = lookup_grid_intensity(location)

    def read(self) -> float:
        """The table's figure, gCO2e/kWh."""
        return self.grid.g_per_kwh

    def describe(self) -> str:
        """The table and location cited."""
        return f"table {self.grid.source} (yearly: the same at every hour)"


def parse_reading(text: str, where: str) -> float:
    """A reading: a number, or a JSON object with ``g_per_kwh`` / ``carbonIntensity``."""
    text = text.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"{where}: {text[:40]!r} is not a number of gCO2e/kWh",
                         hint='write e.g. 300 or {"g_per_kwh": 300}') from None
    if isinstance(data, dict):
        data = next((data[k] for k in _KEYS if k in data), None)
    return _valid(data, where)


def parse_signal(text: str) -> CarbonSignal:
    """``--carbon-signal``: a number, ``file:PATH``, ``http(s)://URL`` or ``table:LOCATION``."""
    kind, sep, rest = text.partition(":")
    if text.startswith(("http://", "https://")):
        return HttpSignal(text)
    if sep and kind == "file":
        return FileSignal(rest)
    if sep and kind == "table":
        return TableSignal(rest)
    try:
        return ConstantSignal(float(text))
    except ValueError:
        raise UsageError(f"carbon signal {text!r} is not a number, file:PATH, http(s)://URL or table:LOCATION",
                         hint="e.g. --carbon-signal file:/run/grid.txt or --carbon-signal table:FRA") from None


def _valid(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{where}: {value!r} is not a non-negative number of gCO2e/kWh",
                         hint='write e.g. 300 or {"g_per_kwh": 300}')
    return float(value)


__all__ = ["CarbonSignal", "ConstantSignal", "FileSignal", "HttpSignal", "TableSignal",
           "parse_reading", "parse_signal"]
