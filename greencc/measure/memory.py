"""Memory measurement: the peak resident set size of this process."""

from __future__ import annotations

import sys


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far, in MB (10^6 bytes); ``None`` where the
    platform does not report it (Windows has no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
