"""This machine as a :class:`HardwareProfile`, without running anything: cores, SIMD
extensions (``/proc/cpuinfo`` flags), clock frequency and cache sizes (sysfs) turned into
peak throughput and a memory hierarchy. It is the prior a quick calibration refines, and
the profile a CPU target uses when calibration is switched off.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from greencc.cost.profile import HardwareProfile, MemoryLevel

# The core count each shipped CPU profile models (x86-avx512 a 96-core EPYC 9654,
# arm-cortex-a76 a 4-core cluster): its static power is scaled to the cores used here.
HOST_PROFILE_CORES = {"x86-avx512": 96, "arm-cortex-a76": 4}
# Clock assumed where neither sysfs nor /proc/cpuinfo gives one (Hz).
FALLBACK_FREQUENCY_HZ = 2.0e9
# Dense multiply-accumulates per cycle per core (float32, int8), two vector pipes each:
# AVX-512 FMA 2x16 fp32; AVX-512 VNNI (VPDPBUSD) 2x64 int8; AMX-INT8 TDPBUSD 16x16x64
# per 16 cycles = 1024 (Intel 64 and IA-32 Optimization Reference Manual, ch. 20);
# AVX2 FMA 2x8 fp32, AVX-VNNI 2x32 int8, AVX2 alone (VPMADDUBSW) 2x16 int8; AArch64
# NEON FMLA 2x4 fp32, SDOT 2x16 int8 (Arm Cortex-A76 Software Optimization Guide).
_MACS_PER_CYCLE: tuple[tuple[frozenset[str], float, float], ...] = (
    (frozenset({"amx_int8", "avx512f"}), 32.0, 1024.0),
    (frozenset({"avx512_vnni", "avx512f"}), 32.0, 128.0),
    (frozenset({"avx512f"}), 32.0, 64.0),
    (frozenset({"avx_vnni", "fma"}), 16.0, 64.0),
    (frozenset({"avx2", "fma"}), 16.0, 32.0),
    (frozenset({"asimddp"}), 8.0, 32.0),
    (frozenset({"asimd"}), 8.0, 16.0),
)
_SCALAR_MACS_PER_CYCLE = (4.0, 8.0)  # SSE-class or unknown vector units
# Sustained bytes per cycle per core a kernel streams from L2 and from the last-level
# cache, and DRAM bytes per second per core (rules of thumb for current server cores;
# a calibration replaces all three with fitted values).
L2_BYTES_PER_CYCLE = 16.0
L3_BYTES_PER_CYCLE = 8.0
DRAM_BYTES_PER_S_PER_CORE = 1.0e10


@dataclass(frozen=True)
class HostCpu:
    """What this machine's CPU is: ``model``, ``logical_cores``, ``arch``, the SIMD
    ``flags`` it reports, ``frequency_hz`` (Hz; the maximum where sysfs says, else the
    current clock) and ``caches`` (level -> (bytes per instance, shared by several cores))."""

    model: str
    logical_cores: int
    arch: str
    flags: frozenset[str]
    frequency_hz: float
    caches: dict[int, tuple[int, bool]]

    @classmethod
    def detect(cls) -> HostCpu:
        """Read ``/proc/cpuinfo`` and sysfs (Linux); elsewhere the fields fall back to
        ``platform``'s answers, no flags and :data:`FALLBACK_FREQUENCY_HZ`."""
        model = ""
        flags: frozenset[str] = frozenset()
        mhz = 0.0
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
            elif key == "cpu MHz" and not mhz:
                try:
                    mhz = float(value)
                except ValueError:
                    pass
        return cls(model=model or platform.processor() or platform.machine(), logical_cores=os.cpu_count() or 1, arch=platform.machine(),
                   flags=flags, frequency_hz=_max_frequency_hz() or mhz * 1e6 or FALLBACK_FREQUENCY_HZ,
                   caches=cache_sizes())

    def macs_per_cycle(self) -> tuple[float, float]:
        """(float32, int8) dense MACs per cycle per core its SIMD extensions allow."""
        for needed, fp32, int8 in _MACS_PER_CYCLE:
            if needed <= self.flags:
                return fp32, int8
        return _SCALAR_MACS_PER_CYCLE

    def simd(self) -> str:
        """The widest SIMD extensions it reports, for descriptions (``avx512f+amx_int8``)."""
        for needed, _, _ in _MACS_PER_CYCLE:
            if needed <= self.flags:
                return "+".join(sorted(needed))
        return "no vector extensions detected"


def _max_frequency_hz() -> float:
    try:
        return float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        return 0.0


def cache_sizes() -> dict[int, tuple[int, bool]]:
    """Level -> (bytes per instance, shared by several cores) from sysfs; empty when unknown."""
    sizes: dict[int, tuple[int, bool]] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * factor
        sizes[level] = (size, "-" in shared or "," in shared)
    return sizes


def memory_levels_here(threads: int, template: HardwareProfile, cpu: HostCpu | None = None) -> list[MemoryLevel]:
    """This machine's memory hierarchy seen by ``threads`` cores: private caches up to L2
    (summed over the threads), the shared last-level cache, and DRAM. Bandwidths (B/s) are
    the rules of thumb above at ``cpu``'s clock; energies per byte (pJ) are the template's."""
    cpu = cpu or HostCpu.detect()
    sizes = cpu.caches
    pj = {lv.name.lower(): lv.energy_pj_per_byte for lv in template.memory_levels}
    levels: list[MemoryLevel] = []
    private = sizes.get(2) or sizes.get(1)
    if private:
        size, shared = private
        capacity = size if shared else size * threads
        levels.append(MemoryLevel("L2", capacity, L2_BYTES_PER_CYCLE * cpu.frequency_hz * threads, pj.get("l2", 4.0)))
    last = sizes.get(3)
    if last and (not levels or last[0] > levels[-1].capacity_bytes):
        levels.append(MemoryLevel("L3", last[0], L3_BYTES_PER_CYCLE * cpu.frequency_hz * threads, pj.get("l3", 8.0)))
    if not levels:  # no sysfs (not Linux): one 1 MiB-per-thread cache level as a stand-in
        levels.append(MemoryLevel("cache", (1 << 20) * threads, L2_BYTES_PER_CYCLE * cpu.frequency_hz * threads,
                                  pj.get("l2", 4.0)))
    try:
        dram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        dram_bytes = 16 << 30
    dram_bytes = max(int(dram_bytes), levels[-1].capacity_bytes * 2)
    levels.append(MemoryLevel("DRAM", dram_bytes, DRAM_BYTES_PER_S_PER_CORE * threads,
                              template.memory_levels[-1].energy_pj_per_byte))
    return levels


def scaled_static_power_w(template: HardwareProfile, threads: int) -> float:
    """``template``'s static power (W) scaled to ``threads`` of the cores it models."""
    cores = HOST_PROFILE_CORES.get(template.name)
    return template.static_power_w * threads / cores if cores else template.static_power_w


def detected_profile_name(target: str, threads: int) -> str:
    """``ort-cpu-2threads-detected``: the uncalibrated host profile of a target and thread count."""
    return f"{target}-{int(threads)}threads-detected"


def host_profile(target: str, threads: int, template: HardwareProfile, cpu: HostCpu | None = None) -> HardwareProfile:
    """This machine seen by ``target`` on ``threads`` cores, from what the CPU reports:
    peak MAC/s = threads x clock x SIMD MACs per cycle (float32, int8), the memory levels
    of :func:`memory_levels_here`, 1 µs per dispatched node, and ``template``'s energy
    terms (pJ/MAC, pJ/byte) with its static power scaled to ``threads`` cores. Not
    calibrated: the peaks are the ISA's, which kernels reach only in part."""
    cpu = cpu or HostCpu.detect()
    fp32, int8 = cpu.macs_per_cycle()
    cycles = cpu.frequency_hz * threads
    energy = {d: template.energy_pj_per_mac.get(d, template.energy_pj_per_mac["float32"]) for d in ("float32", "int8")}
    return HardwareProfile(
        name=detected_profile_name(target, threads),
        description=f"{target} with {threads} thread(s) on {cpu.model} ({cpu.logical_cores} logical cores, "
                    f"{cpu.frequency_hz / 1e9:.2f} GHz, {cpu.simd()}), detected, not calibrated",
        peak_macs_per_s={"float32": fp32 * cycles, "int8": int8 * cycles},
        memory_levels=memory_levels_here(threads, template, cpu),
        energy_pj_per_mac=energy,
        static_power_w=scaled_static_power_w(template, threads),
        op_overhead_s=1e-6,
        supports=dict(template.supports),
        sources=[
            "peaks: threads x clock (sysfs cpuinfo_max_freq, else /proc/cpuinfo) x MACs per cycle of the "
            "SIMD extensions /proc/cpuinfo lists (greencc/cost/host.py cites the ISA figures)",
            "memory level capacities: this machine's caches (sysfs), DRAM = physical memory; "
            "bandwidths: per-core rules of thumb (greencc/cost/host.py)",
            f"energy terms from profile {template.name} (its sources apply); not measured here",
        ],
        calibrated=False,
        calibration_note="detected from /proc/cpuinfo and sysfs, never checked against measurement",
    )
