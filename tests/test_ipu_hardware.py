"""Tests that need Graphcore's real PopTorch, and for training attached IPUs.

They carry the `ipu` marker and are skipped, with the reason, where PopTorch is absent or no IPU
is attached. Run them on an IPU machine with `python -m pytest -m ipu tests/test_ipu_hardware.py`.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from ipu_groupbert.config import load_config

POPTORCH_INSTALLED = importlib.util.find_spec("poptorch") is not None
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IPU_CONFIGS = sorted(p.name for pattern in ("*_pod4.yaml", "*_pod16.yaml", "*_pod64.yaml") for p in CONFIGS.glob(pattern))

pytestmark = [
    pytest.mark.ipu,
    pytest.mark.skipif(
        not POPTORCH_INSTALLED,
        reason="PopTorch is not installed (it ships with Graphcore's Poplar SDK); these tests run on IPU machines",
    ),
]


def _ipus_attached(count: int) -> bool:
    import poptorch

    return bool(poptorch.ipuHardwareIsAvailable(count))


def _tiny(run_dir: Path, device: str):
    return load_config("groupbert_tiny", [
        "--device", device, "--dataset", "generated", "--vocab-size", "1024", "--hidden-size", "64",
        "--num-attention-heads", "2", "--intermediate-size", "256", "--num-hidden-layers", "2",
        "--sequence-length", "64", "--mask-tokens", "10", "--micro-batch-size", "4",
        "--gradient-accumulation", "8", "--replication-factor", "1", "--device-iterations", "1",
        "--training-steps", "10", "--ipus-per-replica", "2", "--layers-per-ipu", "[1,1]", "--matmul-proportion", "0.3",
        "--embedding-serialization-factor", "2", "--recompute-checkpoint-every-layer", "true",
        "--optimizer", "LAMB", "--learning-rate", "2e-3", "--max-grad-norm", "null", "--lr-warmup", "0.2",
        "--precision", "fp32", "--log-steps", "1", "--checkpoint-steps", "0", "--validation-batches", "0",
        "--dataloader-workers", "0", "--disable-progress-bar", "true", "--enable-half-partials", "false",
        "--enable-stochastic-rounding", "false", "--checkpoint-output-dir", str(run_dir),
    ])


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record and "split" not in record]


@pytest.mark.skipif(POPTORCH_INSTALLED and not _ipus_attached(2), reason="needs 2 attached IPUs")
def test_cpu_and_ipu_losses_agree_over_ten_steps(tmp_path):
    from ipu_groupbert.pretraining import main

    main(_tiny(tmp_path / "cpu", "cpu"))
    main(_tiny(tmp_path / "ipu", "ipu"))
    cpu, ipu = _losses(tmp_path / "cpu"), _losses(tmp_path / "ipu")

    assert len(cpu) == len(ipu) == 10
    # Both sides run fp32 with the same data, weights and optimizer. Matmul order and the attention
    # form differ, so the curves agree up to rounding that grows slowly over the steps.
    assert ipu == pytest.approx(cpu, rel=1e-3)
    assert ipu[-1] < ipu[0]


@pytest.mark.parametrize("name", IPU_CONFIGS)
def test_shipped_config_compiles(name, tmp_path):
    from ipu_groupbert.execution.ipu import run_pretraining_on_ipu

    config = load_config(name, [
        "--compile-only", "true", "--device", "ipu", "--executable-cache-dir", str(tmp_path / "cache"),
        "--checkpoint-output-dir", str(tmp_path / "run"),
    ])
    result = run_pretraining_on_ipu(config)
    assert result.last_metrics["compile_seconds"] > 0
    assert not (tmp_path / "run").exists()
