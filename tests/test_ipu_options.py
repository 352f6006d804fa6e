"""poptorch.Options and PopRun set-up built from the configs, against the PopTorch test double.

They verify the mapping from YAML keys onto PopTorch's options, not what PopTorch does with them.
"""

import logging
from pathlib import Path

import pytest
import torch

from ipu_groupbert.config import ConfigError, load_config
from ipu_groupbert.execution.distributed import PopRunContext, init_poprun
from ipu_groupbert.execution.ipu_options import (
    RECOMPUTATION_PIPELINE,
    build_inference_options,
    build_training_options,
    inference_device_iterations,
)
from ipu_groupbert.execution.sdk import import_popdist
from poptorch_double import poptorch_double  # noqa: F401  (fixture)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IPU_CONFIGS = sorted(p.name for pattern in ("*_pod4.yaml", "*_pod16.yaml", "*_pod64.yaml") for p in CONFIGS.glob(pattern))


def test_every_pod_config_is_shipped():
    expected = {
        f"groupbert_{size}{phase}_pod{pod}.yaml"
        for size in ("base", "large") for phase in ("", "_phase2") for pod in (4, 16, 64)
    }
    assert set(IPU_CONFIGS) == expected


@pytest.mark.parametrize("name", IPU_CONFIGS)
def test_options_match_config(name, poptorch_double):
    import poptorch

    config = load_config(name)
    execution, training = config.execution, config.training
    options = build_training_options(config, PopRunContext(local_replicas=execution.replication_factor), poptorch)

    assert options.replication_factor == execution.replication_factor
    assert options.Training.gradient_accumulation == training.gradient_accumulation
    assert options.device_iterations == execution.device_iterations
    derived = config.derived(1)
    assert options.available_memory_proportion == dict(enumerate(derived.matmul_proportion))
    assert len(options.available_memory_proportion) == execution.ipus_per_replica
    assert options.executable_cache == execution.executable_cache_dir
    assert options.random_seed == training.random_seed
    assert options.output_mode == poptorch.OutputMode.All
    assert options.execution_strategy.auto_stage == poptorch.AutoStage.AutoIncrement
    assert options.Training.reduction_type == poptorch.ReductionType.Mean
    assert options.Precision.partials_type == (torch.half if execution.enable_half_partials else None)
    assert options.Precision.stochastic_rounding == execution.enable_stochastic_rounding
    assert options.TensorLocations.optimizer_location == {
        "onChip": int(not execution.optimizer_state_offchip),
        "useReplicatedTensorSharding": int(execution.replicated_tensor_sharding and execution.replication_factor > 1),
    }
    assert options._Popart.options.get("autoRecomputation") == RECOMPUTATION_PIPELINE
    assert not options.synthetic_data
    assert options.offline_ipu_version is None


@pytest.mark.parametrize("name", IPU_CONFIGS)
def test_pod_configs_keep_published_batch(name):
    config = load_config(name)
    phase2 = "phase2" in name
    assert config.derived(1).global_batch_size == (16_384 if phase2 else 65_536)
    assert config.data.sequence_length == (384 if phase2 else 128)
    ipus = int(name.rsplit("_pod", 1)[1].split(".")[0])
    assert config.execution.replication_factor * config.execution.ipus_per_replica == ipus


def test_compile_only_uses_offline_target(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", ["--compile-only", "true"])
    options = build_training_options(config, PopRunContext(local_replicas=1), poptorch)
    assert options.offline_ipu_version == 2
    assert options.connection_type == poptorch.ConnectionType.Never


def test_synthetic_data_option(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", ["--synthetic-data", "true"])
    options = build_training_options(config, PopRunContext(local_replicas=1), poptorch)
    assert options.synthetic_data


def test_options_follow_overrides(poptorch_double):
    import poptorch

    overrides = [
        "--replication-factor", "2", "--gradient-accumulation", "64", "--device-iterations", "4",
        "--training-steps", "40", "--matmul-proportion", "0.3", "--executable-cache-dir", "null",
        "--enable-half-partials", "false", "--optimizer-state-offchip", "false",
        "--recompute-checkpoint-every-layer", "false", "--enable-stochastic-rounding", "false",
    ]
    config = load_config("groupbert_base_pod4", overrides)
    options = build_training_options(config, PopRunContext(local_replicas=2), poptorch)
    assert options.replication_factor == 2
    assert options.Training.gradient_accumulation == 64
    assert options.device_iterations == 4
    assert options.available_memory_proportion == {0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3}
    assert options.executable_cache is None
    assert options.Precision.partials_type is None
    assert not options.Precision.stochastic_rounding
    assert options.TensorLocations.optimizer_location["onChip"] == 1
    assert "autoRecomputation" not in options._Popart.options


def test_automatic_loss_scaling_only_in_fp16(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod4", ["--auto-loss-scaling", "true"])
    assert build_training_options(config, PopRunContext(), poptorch).Training.automatic_loss_scaling
    config = load_config("groupbert_base_pod4", ["--auto-loss-scaling", "true", "--precision", "fp32"])
    assert not build_training_options(config, PopRunContext(), poptorch).Training.automatic_loss_scaling


def test_sharding_needs_replicas(poptorch_double, caplog):
    import poptorch

    config = load_config("groupbert_base_pod4", ["--replicated-tensor-sharding", "true"])
    with caplog.at_level(logging.INFO, logger="ipu_groupbert"):
        options = build_training_options(config, PopRunContext(local_replicas=1), poptorch)
    assert options.TensorLocations.optimizer_location["useReplicatedTensorSharding"] == 0
    assert "no effect with a single replica" in caplog.text


def test_inference_options(poptorch_double):
    import poptorch

    config = load_config("groupbert_base_pod16")
    options = build_inference_options(config, PopRunContext(local_replicas=4), poptorch, pipeline_stages=5)
    assert options.device_iterations == inference_device_iterations(config, 5) == 20
    assert options.replication_factor == 4
    assert not any(name.startswith("Training.") for name in options.call_names())
    assert options.Precision.stochastic_rounding is False
    assert options.available_memory_proportion == {0: 0.15, 1: 0.25, 2: 0.25, 3: 0.25}


def test_poprun_uses_local_replicas(poptorch_double):
    import poptorch

    popdist = import_popdist()

    poptorch_double.poprun = poptorch.PopRunEnvironment(instances=4, instance=1, total_replicas=16)
    config = load_config("groupbert_base_pod64")
    config, context = init_poprun(config, popdist)

    assert poptorch_double.popdist_initialised
    assert context == PopRunContext(instances=4, instance=1, local_replicas=4, under_poprun=True)
    assert config.execution.replication_factor == 4
    assert config.derived(context.instances).global_batch_size == 65_536
    options = build_training_options(config, context, poptorch, popdist)
    assert options.replication_factor == 4
    assert (options.Distributed.processId, options.Distributed.numProcesses) == (1, 4)
    assert options.ipus_per_replica == 4
    assert options.call_names().count("replicationFactor") == 1  # set by PopDist only


def test_poprun_accepts_local_count(poptorch_double):
    import poptorch

    popdist = import_popdist()

    poptorch_double.poprun = poptorch.PopRunEnvironment(instances=4, instance=0, total_replicas=16)
    config, context = init_poprun(load_config("groupbert_base_pod64", ["--replication-factor", "4"]), popdist)
    assert config.execution.replication_factor == 4
    assert context.total_replicas == 16


def test_poprun_mismatch_names_counts(poptorch_double):
    import poptorch

    popdist = import_popdist()

    poptorch_double.poprun = poptorch.PopRunEnvironment(instances=2, instance=0, total_replicas=8)
    with pytest.raises(ConfigError, match=r"is 16, but PopRun started 2 instances with 8 replicas in total \(4 per"):
        init_poprun(load_config("groupbert_base_pod64"), popdist)


def test_without_poprun_nothing_changes(poptorch_double):
    popdist = import_popdist()
    config = load_config("groupbert_base_pod16")
    same, context = init_poprun(config, popdist)
    assert same is config
    assert context == PopRunContext(local_replicas=4)
    assert not poptorch_double.popdist_initialised
