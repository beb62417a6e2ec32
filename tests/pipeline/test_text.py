"""Pipeline text: parsing, round-trip through str(), presets and errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greencc.errors import UsageError
from greencc.pipeline.text import PassSpec, Pipeline


def test_parse_names_and_options():
    p = Pipeline.parse("cleanup, fold-constants{max_size=1048576}, prune-heads{ratio=0.25,method=entropy}")
    assert [s.name for s in p] == ["cleanup", "fold-constants", "prune-heads"]
    assert p.items[1].options == (("max_size", "1048576"),)
    assert p.items[2].options == (("ratio", "0.25"), ("method", "entropy"))


def test_round_trip_exact_text():
    text = "cleanup,fold-constants{max_size=1048576},quantize-int8{method=entropy},prune-heads{ratio=0.25}"
    assert str(Pipeline.parse(text)) == text


def test_quoted_values_round_trip():
    p = Pipeline((PassSpec("x", (("path", "a,b{c}=d \"q\""),)),))
    assert Pipeline.parse(str(p)) == p


def test_presets():
    assert str(Pipeline.parse("-O0")) == ""
    assert str(Pipeline.parse("-O1")) == "cleanup"
    assert str(Pipeline.parse("-O2")) == "cleanup,fuse,dce"
    assert Pipeline.parse("O1") == Pipeline.parse("-O1")


@pytest.mark.parametrize("bad,fragment", [
    ("a{x=1", "missing '}'"),
    ("a{x}", "expected '='"),
    ("a b", "expected ','"),
    ("a,,b", "expected a pass name"),
    ("a{x=1,x=2}", "given twice"),
    ("a{=1}", "expected an option name"),
])
def test_malformed_text_names_the_column(bad, fragment):
    with pytest.raises(UsageError) as info:
        Pipeline.parse(bad)
    assert fragment in info.value.message
    assert "column" in info.value.message


def test_steps_must_be_positive():
    with pytest.raises(UsageError):
        _ = Pipeline.parse("a{steps=0}").items[0].steps
    assert Pipeline.parse("a{steps=3}").items[0].steps == 3


_names = st.from_regex(r"[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,4}){0,2}", fullmatch=True)
_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_names, st.dictionaries(st.from_regex(r"[a-z_]{1,6}", fullmatch=True), _values, max_size=3)), min_size=1, max_size=4))
def test_any_pipeline_round_trips(items):
    pipeline = Pipeline(tuple(PassSpec(n, tuple(o.items())) for n, o in items))
    assert Pipeline.parse(str(pipeline)) == pipeline
