"""`poptorch.Options` built from the run configuration, for training and for inference.

Each option is set with the reason it is needed. The option names are PopTorch 3.x's. A run under
PopRun starts from `popdist.poptorch.Options`, which already contains the instance's replica
count and process id.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch

from ..config import RunConfig, expand_matmul_proportion
from .distributed import PopRunContext

logger = logging.getLogger(__name__)

# PopART's RecomputationType::Pipeline, set through the `_Popart` escape hatch (PopTorch has no enum for it).
RECOMPUTATION_PIPELINE = 3


def build_training_options(
    config: RunConfig, context: PopRunContext, poptorch: ModuleType, popdist: ModuleType | None = None
):
    """Return the options of the training model."""
    execution, training = config.execution, config.training
    options = _common_options(config, context, poptorch, popdist)

    # Each host call runs `device_iterations` optimizer steps. The loop on the IPU avoids a host
    # round trip per step, but the learning rate can change only between calls (setOptimizer runs on the host).
    options.deviceIterations(execution.device_iterations)

    # Micro-batches per replica and step. Pipelining needs many: the pipeline is filled and drained
    # once per step, so more micro-batches spread that cost.
    options.Training.gradientAccumulation(training.gradient_accumulation)
    # Mean over micro-batches and replicas. The training module scales each micro-batch's loss by
    # accumulation x replicas / (tokens in the whole step), so the mean is the step's loss, as on the host.
    options.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Mean)
    # A running mean keeps fp16 gradient accumulators at the size of one gradient, instead of
    # growing with the accumulation count before a final division.
    options.Training.setMeanAccumulationAndReplicationReductionStrategy(poptorch.MeanReductionStrategy.Running)
    if training.precision == "fp16" and training.auto_loss_scaling:
        # PopTorch adapts the loss scale on the device from gradient statistics, starting at
        # the optimizer's loss_scaling (training.loss_scaling).
        options.Training.setAutomaticLossScaling(True)

    # Stochastic rounding keeps fp16 weight updates unbiased when they are smaller than the fp16
    # spacing of the weight; without it, small updates round away.
    options.Precision.enableStochasticRounding(execution.enable_stochastic_rounding)

    # Optimizer state (two moments per weight) is needed only at the optimizer step, once per step,
    # so it can live in streaming memory and, with replication, be sharded across replicas.
    sharding = execution.replicated_tensor_sharding
    if sharding and context.total_replicas == 1:
        logger.info("execution.replicated_tensor_sharding has no effect with a single replica; not enabled")
        sharding = False
    options.TensorLocations.setOptimizerLocation(
        poptorch.TensorLocationSettings()
        .useOnChipStorage(not execution.optimizer_state_offchip)
        .useReplicatedTensorSharding(sharding)
    )

    if execution.recompute_checkpoint_every_layer and execution.ipus_per_replica > 1:
        # Recompute each pipeline stage's activations in the backward pass from the stage inputs
        # and the per-layer checkpoints, instead of stashing every activation of every micro-batch
        # in flight.
        options._Popart.set("autoRecomputation", RECOMPUTATION_PIPELINE)
    return options


def build_inference_options(
    config: RunConfig, context: PopRunContext, poptorch: ModuleType, pipeline_stages: int,
    popdist: ModuleType | None = None,
):
    """Return the options of an inference (validation) model over the same placement."""
    options = _common_options(config, context, poptorch, popdist)
    # Without gradient accumulation, the micro-batches of one call are what fills the pipeline.
    options.deviceIterations(inference_device_iterations(config, pipeline_stages))
    # Deterministic rounding, so evaluation results repeat.
    options.Precision.enableStochasticRounding(False)
    return options


def inference_device_iterations(config: RunConfig, pipeline_stages: int) -> int:
    """Return the micro-batches per replica in one inference call: at least 4 per pipeline stage.

    A pipeline of S stages spends S - 1 micro-batches filling and as many draining. With 4 S
    micro-batches per call, that overhead stays below about a fifth of the call.
    """
    return max(config.execution.device_iterations, 4 * pipeline_stages)


def _common_options(config: RunConfig, context: PopRunContext, poptorch: ModuleType, popdist: ModuleType | None):
    execution = config.execution
    if context.under_poprun:
        # PopDist sets the local replica count and this instance's process id from PopRun.
        options = popdist.poptorch.Options(ipus_per_replica=execution.ipus_per_replica)
    else:
        options = poptorch.Options()
        # Data-parallel copies of the pipelined model, each on its own ipus_per_replica IPUs.
        options.replicationFactor(execution.replication_factor)

    # IPU devices come in powers of two; a replica of 3 IPUs then reserves 4 instead of failing.
    options.autoRoundNumIPUs(True)
    # Seeds the IPU's random generators (dropout, stochastic rounding) for repeatable runs.
    options.randomSeed(config.training.random_seed)
    # One pipeline stage per block, numbered in execution order, so the model may return to IPU 0
    # for the heads after the last encoder IPU (stage id = IPU id would forbid that).
    options.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    # Every micro-batch's sums and counts come back, so the host adds them up exactly; the
    # default for training (Final) would return only the last micro-batch.
    options.outputMode(poptorch.OutputMode.All)

    # Fraction of each IPU's memory that matmul and convolution planning may use for temporaries:
    # lower values leave room for weights and stashed activations, higher values run faster.
    proportions = expand_matmul_proportion(execution.matmul_proportion, execution.ipus_per_replica)
    options.setAvailableMemoryProportion({f"IPU{ipu}": value for ipu, value in enumerate(proportions)})

    if execution.enable_half_partials:
        # fp16 partial sums in matmuls and convolutions halve their temporary memory; Graphcore's
        # published BERT configurations train with them.
        options.Precision.setPartialsType(torch.half)
    if execution.executable_cache_dir:
        # Compiling a pipelined BERT can take many minutes; a cached executable is reused when
        # the model, options and input shapes are unchanged.
        options.enableExecutableCaching(execution.executable_cache_dir)
    if execution.synthetic_data:
        # Inputs are generated on the IPU and host transfers are skipped, which measures the IPU's
        # throughput alone; the losses are then meaningless.
        options.enableSyntheticData(True)
    if execution.compile_only:
        # Compile for an offline IPU target (Mk2 by default), so compilation needs no attached IPUs.
        options.useOfflineIpuTarget()
    return options
