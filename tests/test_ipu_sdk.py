"""The guard around PopTorch: CPU runs never need it, IPU runs explain how to install it."""

import importlib.util
import logging

import pytest

from ipu_groupbert.config import load_config
from ipu_groupbert.execution import sdk
from poptorch_double import poptorch_double  # noqa: F401  (fixture)

REAL_POPTORCH = importlib.util.find_spec("poptorch") is not None


@pytest.mark.skipif(REAL_POPTORCH, reason="PopTorch is installed here, so its absence cannot be tested")
def test_missing_poptorch_explains_install():
    with pytest.raises(ImportError, match=r"execution.device ipu needs PopTorch.*Poplar SDK.*poptorch-3"):
        sdk.import_poptorch()
    assert sdk.ipus_attached() is False


@pytest.mark.skipif(REAL_POPTORCH, reason="PopTorch is installed here, so its absence cannot be tested")
def test_ipu_device_without_poptorch_fails_clearly(tmp_path):
    from ipu_groupbert.pretraining import main

    config = load_config("groupbert_tiny", ["--device", "ipu", "--checkpoint-output-dir", str(tmp_path / "run")])
    with pytest.raises(ImportError, match="Poplar SDK"):
        main(config)
    assert not (tmp_path / "run").exists()


def test_execution_modules_import_without_poptorch():
    # Importing the IPU path must not import PopTorch; only starting an IPU run does.
    import ipu_groupbert.execution.ipu as ipu_module

    assert callable(ipu_module.run_pretraining_on_ipu)
    assert callable(ipu_module.ipus_attached)


def test_ipus_attached_follows_hardware(poptorch_double):
    assert sdk.ipus_attached() is False
    poptorch_double.hardware_available = True
    assert sdk.ipus_attached() is True


def test_popdist_guard(poptorch_double):
    popdist = sdk.import_popdist()
    assert popdist.isPopdistEnvSet() is False
    assert callable(popdist.poptorch.Options)


def test_host_lists_ignored_ipu_keys_once(caplog):
    from ipu_groupbert.pretraining import _log_ignored_ipu_keys

    config = load_config("groupbert_base_pod16")
    with caplog.at_level(logging.INFO, logger="ipu_groupbert"):
        _log_ignored_ipu_keys(config)
    lines = [record.getMessage() for record in caplog.records if "IPU-only" in record.getMessage()]
    assert len(lines) == 1
    for key in ("layers_per_ipu", "matmul_proportion", "ipus_per_replica", "embedding_serialization_factor",
                "executable_cache_dir"):
        assert f"execution.{key}" in lines[0]
