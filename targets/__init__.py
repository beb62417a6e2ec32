"""greencc's built-in targets and hardware profiles (profiles/*.json); importing this
package registers the targets. Backends are imported lazily, on first use."""

from greencc.targets import ort_cpu  # noqa: F401  (registers "ort-cpu")
