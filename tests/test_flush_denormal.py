"""Opt-in flush-to-zero: off by default (IEEE subnormals kept), on flushes, state restored."""

from __future__ import annotations

import platform

import numpy as np
import pytest

import generated
from opgen.runtime import available_backends, flush_denormal, use_backend

pytestmark = [
    pytest.mark.skipif("c" not in available_backends(), reason="needs the C backend"),
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="FTZ/DAZ is x86 only"),
]

TINY = np.float32(1e-40)  # subnormal in float32


@pytest.fixture
def flushing():
    assert generated.set_flush_denormal(True)
    yield
    generated.set_flush_denormal(False)


def _one_step():
    w, g = np.ones(64, np.float32), np.zeros(64, np.float32)
    mean, var = np.full(64, TINY), np.full(64, TINY)
    with use_backend("c"):
        generated.adam_update(w, g, mean, var, lr=0.1, out=w)
    return mean, var


def test_off_by_default_keeps_ieee_subnormals():
    assert not flush_denormal()
    mean, _ = _one_step()
    assert mean[0] == np.float32(0.9) * TINY and mean[0] != 0  # 0.9 * 1e-40, still subnormal


def test_on_flushes_subnormals_to_zero(flushing):
    mean, var = _one_step()
    assert np.all(mean == 0) and np.all(var == 0)


def test_flag_does_not_leak_into_the_caller(flushing):
    _one_step()
    assert np.float32(1e-38) * np.float32(0.01) != 0  # this thread still computes subnormals
