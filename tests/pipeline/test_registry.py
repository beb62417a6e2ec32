"""Pass registration, typed options and function passes."""

from typing import Literal

import pytest

import greencc as gc
from greencc.errors import UsageError
from greencc.pipeline.base import get_pass_class, registered_passes
from greencc.pipeline.text import Pipeline


@gc.register_pass("test-typed-options")
class TypedOptions(gc.Pass):
    """A pass with typed options, for tests."""

    ratio: float = 0.5
    count: int = 3
    enabled: bool = True
    method: Literal["minmax", "entropy"] = "minmax"

    def call(self, model, ctx):
        return gc.PassResult(model, modified=False)


def test_options_are_typed_and_defaulted():
    p = get_pass_class("test-typed-options")(ratio="0.25", count="7", enabled="false", method="entropy")
    assert (p.ratio, p.count, p.enabled, p.method) == (0.25, 7, False, "entropy")
    d = get_pass_class("test-typed-options")()
    assert (d.ratio, d.count, d.enabled, d.method) == (0.5, 3, True, "minmax")


@pytest.mark.parametrize("options,fragment", [
    ({"count": "1.5"}, "count"),
    ({"enabled": "maybe"}, "true or false"),
    ({"method": "kl"}, "one of minmax, entropy"),
    ({"nope": "1"}, "has no option 'nope'"),
])
def test_bad_options_are_usage_errors(options, fragment):
    with pytest.raises(UsageError) as info:
        get_pass_class("test-typed-options")(**options)
    assert fragment in str(info.value)


def test_str_shows_explicit_options_and_round_trips():
    spec = Pipeline.parse("test-typed-options{ratio=0.25,method=entropy}").items[0]
    p = spec.instantiate()
    assert str(p) == "test-typed-options{ratio=0.25,method=entropy}"
    assert str(Pipeline.of([p])) == str(p)


def test_name_is_explicit_not_from_class():
    assert TypedOptions.name == "test-typed-options"
    with pytest.raises(UsageError):
        gc.register_pass("NotKebab")


def test_duplicate_name_rejected_unless_replace():
    with pytest.raises(UsageError, match="already registered"):
        @gc.register_pass("test-typed-options")
        class Other(gc.Pass):
            def call(self, model, ctx):
                return gc.PassResult(model, False)


def test_unknown_pass_suggests():
    with pytest.raises(UsageError) as info:
        get_pass_class("test-typed-option")
    assert "test-typed-options" in info.value.hint


def test_function_pass():
    @gc.register_pass("test-function-pass")
    def touch(model, ctx):
        """Does nothing, says so."""
        return False

    cls = registered_passes()["test-function-pass"]
    assert cls.lossy is False and cls.name == "test-function-pass"
    assert "Does nothing" in cls.__doc__


def test_option_without_default_is_a_definition_error():
    with pytest.raises(TypeError, match="needs a default"):
        class Broken(gc.Pass):
            ratio: float
