"""A small stand-in for Graphcore's `poptorch` and `popdist` packages, for CPU tests only.

PopTorch ships inside the Poplar SDK and needs IPUs, neither of which exists on CI machines.
This double lets the tests check the mapping from this project's configuration and model onto
PopTorch's API. It records which modules get `BeginBlock` on which IPU, which `poptorch.Options`
calls are made with which values, how the optimizers are built, and when `setOptimizer` is called.

It does not compile or run anything on IPUs, so passing tests do not show that execution on
IPUs works. Annotations are inert (as real PopTorch's are outside IPU compilation), and an
executor runs the plain model on the CPU micro-batch by micro-batch and never updates weights. Tests that need
real IPUs carry `@pytest.mark.ipu` and use the real package.

The fake packages live in `sdk/`, which is put on `sys.path` only by the `poptorch_double`
fixture, never on the product's default import path.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

SDK_DIR = Path(__file__).resolve().parent / "sdk"
_MODULE_PREFIXES = ("poptorch", "popdist")


def _drop_cached_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _MODULE_PREFIXES:
            del sys.modules[name]


@contextlib.contextmanager
def installed():
    """Install the double as `poptorch`/`popdist` inside the block; yield its call recorder."""
    _drop_cached_modules()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.syspath_prepend(str(SDK_DIR))
        import poptorch

        poptorch.RECORD.reset()
        try:
            yield poptorch.RECORD
        finally:
            _drop_cached_modules()


@pytest.fixture
def poptorch_double():
    """Install the double for one test; yield its call recorder."""
    with installed() as record:
        yield record
