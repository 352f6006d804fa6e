"""Guarded imports of PopTorch and PopDist, which ship as wheels inside Graphcore's Poplar SDK."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "PopTorch is not on PyPI: it ships as a wheel inside Graphcore's Poplar SDK. Enable the SDK "
    "(source enable.sh in its poplar-* folder) and install the PopTorch wheel from the SDK folder, "
    "for example `pip install <sdk>/poptorch-3.*.whl`, in this environment; PopTorch 3.x needs torch 2.0. "
    "To run without IPUs, set execution.device to cpu, cuda or auto"
)


def import_poptorch() -> ModuleType:
    """Return the `poptorch` module, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module("poptorch")
    except ImportError as error:
        raise ImportError(f"execution.device ipu needs PopTorch, which failed to import ({error}). {INSTALL_HINT}") from error


def import_popdist() -> ModuleType:
    """Return the `popdist` package with its `popdist.poptorch` helpers, or raise ImportError."""
    try:
        popdist = importlib.import_module("popdist")
        importlib.import_module("popdist.poptorch")
    except ImportError as error:
        raise ImportError(
            f"running under PopRun needs PopDist, which failed to import ({error}). Install the popdist wheel "
            f"from the same Poplar SDK folder as PopTorch (`pip install <sdk>/popdist-*.whl`)"
        ) from error
    return popdist


def ipus_attached() -> bool:
    """Return True when PopTorch imports and reports IPU hardware; used by `execution.device: auto`."""
    try:
        poptorch = importlib.import_module("poptorch")
    except ImportError:
        return False
    try:
        return bool(poptorch.ipuHardwareIsAvailable())
    except RuntimeError as error:
        # The query talks to the IPU driver; a broken driver must not stop a run that can use the host.
        logger.warning("PopTorch imported but the IPU hardware query failed (%s); using the host backend", error)
        return False
