"""Test-session set-up: greencc's user cache (calibrated profiles, tuning records) points at
a fresh temporary directory, so no test reads what `greencc cost calibrate` or a TVM tuning
run left in ~/.cache on the machine running the suite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx.parser
import pytest

from tests.helpers import GOOD


def pytest_configure(config) -> None:  # noqa: ANN001 - pytest's hook signature
    os.environ["GREENCC_CACHE_DIR"] = tempfile.mkdtemp(prefix="greencc-test-cache-")
    # The shipped socket profiles, as every machine running the suite has them; tests of
    # the host profile and its quick calibration set it themselves.
    os.environ["GREENCC_HOST_PROFILE"] = "off"


@pytest.fixture
def good_model(tmp_path: Path) -> Path:
    """:data:`tests.helpers.GOOD` saved as ``good.onnx`` in the test's temp dir."""
    path = tmp_path / "good.onnx"
    onnx.save(onnx.parser.parse_model(GOOD), path)
    return path
