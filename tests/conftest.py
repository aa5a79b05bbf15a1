"""Shared fixtures: run a test once per available backend."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `import reference`

from opgen.runtime import available_backends, use_backend  # noqa: E402

BACKENDS = available_backends()


@pytest.fixture(params=BACKENDS, ids=[f"backend={b}" for b in BACKENDS])
def backend(request):
    """Run the test body with one backend selected."""
    with use_backend(request.param):
        yield request.param
