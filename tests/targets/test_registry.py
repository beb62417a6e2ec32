"""The target registry, entry-point plugins, tags and the small Target API types."""

from __future__ import annotations

import importlib.metadata
import sys
import uuid
from types import SimpleNamespace

import pytest

import greencc as gc
import greencc.target.registry as target_api
from greencc.target import (
    Availability,
    Partition,
    Target,
    get_target_class,
    group_partitions,
    register_target,
    registered_targets,
    resolve_target,
)
from greencc.targets.ort.cpu import OrtCpu
from greencc.targets.tags import TAGS


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, with entry points read again on first use."""
    registered_targets()  # built-ins loaded into the real registry first
    monkeypatch.setattr(target_api, "_TARGETS", dict(target_api._TARGETS))
    monkeypatch.setattr(target_api, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    return target_api._TARGETS


def test_importing_greencc_targets_registers_ort_cpu():
    import greencc.targets  # noqa: F401

    assert registered_targets()["ort-cpu"] is OrtCpu
    assert get_target_class("ort-cpu") is OrtCpu
    assert OrtCpu.name == "ort-cpu" and OrtCpu.description
    assert list(registered_targets()) == sorted(registered_targets())


def test_register_target_rejects_duplicates_and_bad_names(registry):
    @register_target("test-npu")
    class TestNpu(Target):
        """A test accelerator."""

    assert registry["test-npu"] is TestNpu
    assert TestNpu.name == "test-npu" and TestNpu.description == "A test accelerator."
    assert register_target("test-npu")(TestNpu) is TestNpu  # the same class again is fine

    class Impostor(Target):
        pass

    with pytest.raises(gc.UsageError, match="already registered"):
        register_target("test-npu")(Impostor)
    with pytest.raises(gc.UsageError, match="already registered"):
        register_target("ort-cpu")(Impostor)
    register_target("test-npu", replace=True)(Impostor)
    assert registry["test-npu"] is Impostor
    for bad in ("TestNpu", "test_npu", "-npu", "npu-", ""):
        with pytest.raises(gc.UsageError, match="kebab-case"):
            register_target(bad)


def test_unknown_target_suggests_close_names():
    with pytest.raises(gc.UsageError, match="unknown target 'ort-cpuu'") as info:
        get_target_class("ort-cpuu")
    assert "ort-cpu" in info.value.hint
    with pytest.raises(gc.UsageError) as info:
        resolve_target("x86-avx51")
    assert "x86-avx512" in info.value.hint
    with pytest.raises(gc.UsageError, match="name or a greencc.Target"):
        resolve_target(42)


@pytest.mark.parametrize(("tag", "name"), [("x86-avx512", "ort-cpu"), ("arm-cortex-a76", "tvm-aarch64")])
def test_cpu_tags_resolve_to_their_target_with_their_profile(tag, name):
    target = resolve_target(tag, threads=1)
    assert target.name == name
    assert isinstance(target, OrtCpu) == (name == "ort-cpu")
    assert target.selected_profile_name == TAGS[tag][1] == tag
    assert target.options["threads"] == 1
    assert resolve_target(tag, profile="nvidia-h100").selected_profile_name == "nvidia-h100"


@pytest.mark.parametrize(("tag", "missing"), [("nvidia-h100", "cuda-inductor"), ("asic-int8-systolic", "asic-int8")])
def test_tag_of_an_unregistered_target_is_unavailable(registry, tag, missing):
    registry.pop(missing, None)
    with pytest.raises(gc.TargetUnavailableError, match=f"tag '{tag}' uses target '{missing}'"):
        resolve_target(tag)


def test_tag_resolves_once_its_target_is_registered(registry):
    registry.pop("asic-int8", None)

    @register_target("asic-int8")
    class FakeAsic(Target):
        """Stands in for the ASIC target."""

    target = resolve_target("asic-int8-systolic")
    assert isinstance(target, FakeAsic)
    assert target.selected_profile_name == "asic-int8-systolic"


def test_resolve_target_instances():
    target = resolve_target("ort-cpu", threads=1)
    assert resolve_target(target) is target
    changed = resolve_target(target, optimization="basic")
    assert changed is not target
    assert changed.options == {"threads": 1, "optimization": "basic"}
    assert changed.selected_profile_name == target.selected_profile_name


def test_profile_loads_lazily_by_name(monkeypatch):
    from greencc.cost import profile as profile_module

    loaded = []

    def named(name):
        loaded.append(name)
        return SimpleNamespace(name=name)

    monkeypatch.setattr(profile_module.HardwareProfile, "named", staticmethod(named))
    target = resolve_target("arm-cortex-a76")
    assert loaded == []
    assert target.profile.name == "arm-cortex-a76"
    assert target.profile is target.profile and loaded == ["arm-cortex-a76"]
    given = SimpleNamespace(name="custom")
    assert OrtCpu(profile=given).profile is given
    assert OrtCpu(profile=given).selected_profile_name == "custom"


def _write_plugin(tmp_path, monkeypatch, body: str) -> str:
    module = f"greencc_test_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module


def _entry_points(monkeypatch, *points):
    def entry_points(**kwargs):
        assert kwargs == {"group": "greencc.targets"}
        return list(points)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_entry_point_plugins_load_lazily_and_broken_ones_show_as_unavailable(
    registry, tmp_path, monkeypatch
):
    good = _write_plugin(
        tmp_path,
        monkeypatch,
        "import greencc as gc\n"
        "class MyNpu(gc.Target):\n"
        "    '''A third-party NPU.'''\n"
        "    def available(self):\n"
        "        return gc.Availability(True)\n",
    )
    broken = _write_plugin(tmp_path, monkeypatch, "raise ImportError('libnpu.so not found')\n")
    _entry_points(
        monkeypatch,
        importlib.metadata.EntryPoint("my-npu", f"{good}:MyNpu", "greencc.targets"),
        importlib.metadata.EntryPoint("bad-npu", f"{broken}:BadNpu", "greencc.targets"),
    )
    assert good not in sys.modules  # nothing is imported before the registry is asked

    targets = registered_targets()
    assert {"ort-cpu", "my-npu", "bad-npu"} <= set(targets)
    assert targets["my-npu"].__name__ == "MyNpu" and targets["my-npu"].name == "my-npu"
    assert resolve_target("my-npu").available().ok

    availability = targets["bad-npu"]().available()
    assert availability.ok is False
    assert "libnpu.so not found" in availability.reason and broken in availability.reason
    with pytest.raises(gc.TargetUnavailableError, match="libnpu.so not found"):
        resolve_target("bad-npu")


def test_plugin_that_registers_itself_on_import(registry, tmp_path, monkeypatch):
    module = _write_plugin(
        tmp_path,
        monkeypatch,
        "import greencc as gc\n"
        "@gc.register_target('self-npu')\n"
        "class SelfNpu(gc.Target):\n"
        "    '''Registers itself.'''\n",
    )
    _entry_points(monkeypatch, importlib.metadata.EntryPoint("self-npu", module, "greencc.targets"))
    assert get_target_class("self-npu").__name__ == "SelfNpu"


def test_unreadable_entry_points_do_not_break_the_registry(registry, monkeypatch):
    def entry_points(**kwargs):
        raise RuntimeError("corrupt metadata")

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with pytest.warns(UserWarning, match="corrupt metadata"):
        targets = registered_targets()
    assert "ort-cpu" in targets


def test_availability_is_falsy_when_not_ok():
    assert Availability(True)
    assert not Availability(False, "no device")
    ok, reason = Availability(False, "no device")
    assert (ok, reason) == (False, "no device")


def test_group_partitions_and_claimed():
    partitions = group_partitions(
        [
            ("a", "my-npu", ""),
            ("b", "my-npu", ""),
            ("c", "fallback:ort-cpu", "no int4"),
            ("d", "fallback:ort-cpu", "no int4"),
            ("e", "fallback:ort-cpu", "no Erf"),
            ("f", "my-npu", ""),
        ]
    )
    assert partitions == [
        Partition("my-npu", ["a", "b"]),
        Partition("fallback:ort-cpu", ["c", "d", "e"], "no int4; no Erf"),
        Partition("my-npu", ["f"]),
    ]
    assert [p.claimed for p in partitions] == [True, False, True]
    assert not Partition("unsupported", ["x"]).claimed
    assert group_partitions([]) == []


def test_base_target_defaults():
    class Bare(Target):
        pass

    bare = Bare()
    assert bare.legalize() == [] and bare.supported_fused_ops() == set()
    assert bare.available().ok
    with pytest.raises(gc.UsageError, match="no option 'threads'"):
        Bare(threads=2)
