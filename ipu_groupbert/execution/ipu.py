"""Pre-training on IPUs through PopTorch: `run_pretraining_on_ipu(config)`.

The loop, top to bottom:
1. join PopRun when it started this process, and set up the run folder (on instance 0 only);
2. build the PopTorch options, then prepare the data and one loader per local replica;
3. build or load the model, place it on the IPUs and build PopTorch's optimizer;
4. start a `poptorch.DataLoader` that reads the per-replica loaders from the resume position,
   and compile, timed apart from the steps (a `compile_only` run stops here);
5. per host call, run `device_iterations` optimizer steps on one combined batch, push the new
   learning rate with `setOptimizer`, log and checkpoint;
6. save, and evaluate with an inference model.

It reuses the host loop's pieces (data preparation, loaders, model loading, summaries,
checkpoints, metrics), so an IPU run reads the same samples and writes the same files as a host
run, and its checkpoints load on either backend.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt
from ..config import ConfigError, RunConfig
from ..models import build_model, model_config_from_dict
from ..optim import build_lr_scheduler
from ..pretraining import validate as _host_validate
from ..pretraining import (
    MicroBatchStream,
    PretrainingResult,
    build_or_load_model,
    create_metrics_logger,
    find_resume_checkpoint,
    prepare_data,
    training_loader,
    model_inputs,
    summarise,
)
from ..runtime import DistributedContext, capture_rng_state, restore_rng_state, seed_everything
from ..trainer import Batch, TrainingStopped
from . import batching
from .distributed import InstanceCommunicator, PopRunContext, create_communicator, init_poprun
from .ipu_optim import build_ipu_optimizer
from .ipu_options import build_inference_options, build_training_options, inference_device_iterations
from .parallelize import deparallelize, parallelize
from .placement import pipeline_stages
from .sdk import import_popdist, import_poptorch, ipus_attached

logger = logging.getLogger(__name__)

__all__ = ["PretrainingStep", "ipus_attached", "run_pretraining_on_ipu"]

BACKEND = "ipu"


class PretrainingStep(nn.Module):
    """A pre-training model as PopTorch needs it: tensor inputs by keyword, the loss first among tensor outputs.

    `poptorch.trainingModel` finds the loss among the model's outputs and returns only tensors. So
    the `PreTrainingOutput` dataclass becomes a tuple in the order of `OUTPUTS`, and `name_outputs`
    turns it back into named values on the host. The loss is each micro-batch's summed MLM and NSP
    losses times the loss weights of its step (see `batching`), so the gradient PopTorch averages
    over micro-batches and replicas is the gradient of the step's loss.
    """

    OUTPUTS = ("loss", "mlm_loss_sum", "mlm_count", "mlm_correct", "nsp_loss_sum", "nsp_count", "nsp_correct")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        masked_lm_positions: torch.Tensor,
        masked_lm_labels: torch.Tensor,
        next_sentence_positions: torch.Tensor,
        next_sentence_labels: torch.Tensor,
        mlm_loss_weight: torch.Tensor,  # [B], the same value on every row of a step
        nsp_loss_weight: torch.Tensor,  # [B]
        sequence_ids: torch.Tensor | None = None,  # packed rows only
    ) -> tuple[torch.Tensor, ...]:
        output = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, sequence_ids=sequence_ids, masked_lm_positions=masked_lm_positions,
            masked_lm_labels=masked_lm_labels, next_sentence_positions=next_sentence_positions,
            next_sentence_labels=next_sentence_labels,
        )
        loss = output.mlm_loss_sum * mlm_loss_weight[0] + output.nsp_loss_sum * nsp_loss_weight[0]
        # identity_loss marks the already reduced value as the loss to differentiate.
        loss = import_poptorch().identity_loss(loss, reduction="none")
        return (loss, output.mlm_loss_sum, output.mlm_count, output.mlm_correct,
                output.nsp_loss_sum, output.nsp_count, output.nsp_correct)

    @classmethod
    def name_outputs(cls, outputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """Return each statistic summed over every micro-batch of the call (OutputMode.All returns one per micro-batch)."""
        if len(outputs) != len(cls.OUTPUTS):
            raise RuntimeError(f"the IPU model returned {len(outputs)} outputs, expected {len(cls.OUTPUTS)}: {cls.OUTPUTS}")
        return {name: float(value.double().sum()) for name, value in zip(cls.OUTPUTS, outputs) if name != "loss"}


def run_pretraining_on_ipu(config: RunConfig, *, communicator: InstanceCommunicator | None = None) -> PretrainingResult:
    """Pre-train the model that `config` describes on IPUs; return where the results are.

    `communicator` replaces the MPI collectives between PopRun instances (tests pass their own).
    """
    poptorch = import_poptorch()
    popdist = _import_popdist_if_installed()
    config, context = init_poprun(config, popdist)
    _check_ipu_settings(config)
    communicator = communicator or create_communicator(context)
    package_logger = logging.getLogger("ipu_groupbert")
    previous_level = package_logger.level
    if not context.is_main:
        # Only instance 0 writes logs, as only it writes metrics and checkpoints; warnings still show.
        package_logger.setLevel(logging.WARNING)
    try:
        if config.execution.compile_only:
            return _compile_only(config, context, poptorch, popdist)
        return _pretrain(config, context, communicator, poptorch, popdist)
    finally:
        package_logger.setLevel(previous_level)


def _pretrain(
    config: RunConfig, context: PopRunContext, communicator: InstanceCommunicator, poptorch: ModuleType,
    popdist: ModuleType | None,
) -> PretrainingResult:
    training, execution = config.training, config.execution
    derived = config.derived(context.instances)
    run_dir = Path(training.checkpoint_output_dir)
    resume_from = find_resume_checkpoint(config, run_dir)

    # Set up the run folder and log the resolved configuration (instance 0 only).
    if context.is_main:
        ckpt.prepare_run_dir(run_dir, resume=resume_from is not None, overwrite=training.overwrite_output_dir)
        config.save(run_dir / ckpt.RUN_CONFIG_FILE)
        logger.info("Run folder: %s\n%s", run_dir, config.format_summary(context.instances))
        _log_ipu_notes(config, context)
    communicator.barrier()
    # Options before anything random: randomSeed also seeds torch's generator, which a resumed
    # run then restores from the checkpoint.
    options = build_training_options(config, context, poptorch, popdist)
    seed_everything(training.random_seed)

    # Data: one loader per local replica, sharded by global replica index as on the host.
    data_dir, tokenizer_dir, data_vocab_size = _prepare_data_once(config, context, communicator)
    replica_ids = [context.replica_offset + replica for replica in range(context.local_replicas)]
    loaders = [training_loader(config, data_dir, replica, derived.replicas) for replica in replica_ids]
    stream = MicroBatchStream(loaders, training.gradient_accumulation)

    # Model: placed on the IPUs; a plain fp32 twin receives the weights for each checkpoint.
    model = build_or_load_model(config, resume_from, data_vocab_size)
    export_model = build_model(model.config, "pretraining")
    if training.precision == "fp16":
        model.half()
    plan = parallelize(model, config, "pretraining")
    step_module = PretrainingStep(model)
    optimizer = build_ipu_optimizer(model, training, poptorch)
    scheduler = build_lr_scheduler(optimizer, training, training.training_steps)
    start_step = 0
    if resume_from is not None:
        start_step = _restore(resume_from, optimizer, scheduler, stream, context, execution.device_iterations)
    # The loaders are not iterated here: they check a checkpoint's positions and give the start.
    start_states = stream.state_dict()
    data_loader = _training_data_loader(config, options, poptorch, batching.ReplicaLoaders(
        config=config, data_dir=data_dir, replicas=tuple(replica_ids), total_replicas=derived.replicas,
        states=tuple(start_states),
    ))
    call_batches = iter(data_loader)

    def next_call_batch() -> Batch:
        return batching.with_loss_weights(
            next(call_batches), communicator.sum, device_iterations=execution.device_iterations,
            accumulation=training.gradient_accumulation, total_replicas=context.total_replicas,
        )

    def data_state_after(step: int) -> list[dict]:
        # The DataLoader reads ahead, so positions come from the steps done, not from its loaders.
        batches = (step - start_step) * training.gradient_accumulation
        return [batching.advance_loader_state(state, batches) for state in start_states]

    # Compile, or load the executable from the cache, timed apart from the steps.
    training_model = poptorch.trainingModel(step_module, options, optimizer=optimizer)
    try:
        batch = next_call_batch()
        compile_seconds = _compile(training_model, batch)
    except BaseException:
        data_loader.terminate()
        raise

    # IPU peak FLOP/s are not tabulated, so MFU is not computed here.
    metrics = create_metrics_logger(
        config, model.config, run_dir, is_main=context.is_main, world_size=context.instances,
        start_step=start_step, peak_flops_per_second=None,
    )
    metrics.log_event({"event": "compile", "step": start_step, "compile_seconds": compile_seconds})

    def save(step: int, data_state: list[dict]) -> None:
        # Every instance hands its loaders' positions after `step` to instance 0, which writes the checkpoint.
        data_states = communicator.gather(data_state)
        if context.is_main:
            training_model.copyWeightsToHost()
            export_model.load_state_dict({key: value.detach().float() for key, value in model.state_dict().items()})
            state = {
                "step": step,
                "backend": BACKEND,
                "trainer": {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "loss_scaler": None},
                "rng": capture_rng_state(),
                "data": [loader_state for instance_states in data_states for loader_state in instance_states],
                "world_size": context.instances,
            }
            ckpt.save_checkpoint(run_dir, step, export_model, state, config, tokenizer_dir)
        communicator.barrier()

    # Train: each call runs device_iterations optimizer steps at one learning rate.
    step, last_record = start_step, None
    saved_step = start_step if resume_from is not None else None
    data_state = None  # the loaders' positions after `step`, taken after each call
    logger.info("Training from step %d to %d on IPUs", start_step, training.training_steps)
    try:
        while step < training.training_steps:
            learning_rate = scheduler.get_last_lr()[0]
            sums = PretrainingStep.name_outputs(training_model(**batch))
            data_state = data_state_after(step + execution.device_iterations)
            sums = dict(zip(sums, communicator.sum(np.array(list(sums.values())))))
            _check_finite(sums, step, config)
            previous, step = step, step + execution.device_iterations

            for _ in range(execution.device_iterations):
                scheduler.step()
            training_model.setOptimizer(optimizer)

            if _crossed(previous, step, config.logging.log_steps) or step == training.training_steps:
                values = {**summarise(sums), "learning_rate": learning_rate}
                if training.precision == "fp16" and not training.auto_loss_scaling:
                    values["loss_scale"] = training.loss_scaling
                last_record = metrics.log_step(step, values)
            if previous == start_step:
                # The first call also uploads weights and starts the data workers; time from here.
                metrics.restart_interval(step)
            if training.checkpoint_steps and _crossed(previous, step, training.checkpoint_steps):
                save(step, data_state)
                saved_step = step
            if step < training.training_steps:
                batch = next_call_batch()
    except KeyboardInterrupt:
        # The IPU finished every call that returned, so the weights are those of `step`.
        if saved_step != step and step > start_step:
            save(step, data_state)
        metrics.close()
        raise
    except TrainingStopped:
        metrics.close()
        raise
    finally:
        data_loader.terminate()

    # Save, then evaluate on held-out text with an inference model.
    if saved_step != step:
        save(step, data_state)
    training_model.detachFromDevice()
    validation = None
    if training.validation_batches > 0:
        validation = _validate(config, context, communicator, poptorch, popdist, step_module, plan, data_dir)
        metrics.log_event({"split": "validation", "step": step, **validation})
    metrics.close()
    deparallelize(model)
    return PretrainingResult(run_dir=run_dir, final_step=step, last_metrics=last_record, validation=validation)


def _compile_only(config: RunConfig, context: PopRunContext, poptorch: ModuleType, popdist: ModuleType | None):
    """Compile the training executable for an offline IPU target, log the time and stop.

    The weights are freshly initialised and the inputs generated, because compilation depends
    only on shapes; no data is prepared and no run folder is written.
    """
    training, execution = config.training, config.execution
    options = build_training_options(config, context, poptorch, popdist)
    model = build_model(model_config_from_dict({"model_type": config.model.model_type, **config.model_config_dict()}),
                        "pretraining")
    if training.precision == "fp16":
        model.half()
    parallelize(model, config, "pretraining")
    optimizer = build_ipu_optimizer(model, training, poptorch)
    total_replicas = context.total_replicas
    loaders = [training_loader(config, None, context.replica_offset + r, total_replicas)
               for r in range(context.local_replicas)]
    stream = MicroBatchStream(loaders, training.gradient_accumulation)
    windows = [[model_inputs(b) for b in stream.next_window()] for _ in range(execution.device_iterations)]
    weights = batching.loss_weights(np.ones((len(windows), 2)), training.gradient_accumulation, total_replicas)
    batch = batching.combined_training_batch(windows, weights, context.local_replicas, training.gradient_accumulation)
    training_model = poptorch.trainingModel(PretrainingStep(model), options, optimizer=optimizer)
    compile_seconds = _compile(training_model, batch)
    logger.info("execution.compile_only is true: stopping after compilation")
    deparallelize(model)
    return PretrainingResult(
        run_dir=Path(training.checkpoint_output_dir), final_step=0,
        last_metrics={"compile_seconds": compile_seconds}, validation=None,
    )


def _training_data_loader(config: RunConfig, options, poptorch: ModuleType, loaders: batching.ReplicaLoaders):
    """Return the `poptorch.DataLoader` whose each batch is one call's combined batch, with step counts.

    Its batch_size is the micro-batch, so PopTorch combines micro_batch x device_iterations x
    replicas x accumulation rows, which `CombinedBatchRows` yields in that call's order. One
    reading process (num_workers=0): every worker of an IterableDataset would yield every row,
    and the per-replica loaders already load with `data.dataloader_workers` workers each.
    Asynchronous mode fills the next calls' batches in a separate process while the IPUs compute.
    Each PopRun instance reads its own shards, so PopTorch must not partition the data again.
    """
    dataset = batching.CombinedBatchRows(loaders, device_iterations=config.execution.device_iterations)
    # NOTE: the asynchronous worker (a spawned process reading this dataset) and its ring buffer
    # have not been run against a real PopTorch; the CPU tests use a double of poptorch.DataLoader.
    return poptorch.DataLoader(
        options, dataset, batch_size=config.training.micro_batch_size, shuffle=False, num_workers=0,
        drop_last=True, auto_distributed_partitioning=False, mode=poptorch.DataLoaderMode.Async,
        async_options={"load_indefinitely": True, "early_preload": True},
    )


def _compile(training_model, batch: Batch) -> float:
    logger.info("Compiling the IPU executable (or loading it from execution.executable_cache_dir)")
    start = time.perf_counter()
    training_model.compile(**batch)
    seconds = time.perf_counter() - start
    logger.info("Compiled in %.1f s", seconds)
    return seconds


def _validate(
    config: RunConfig, context: PopRunContext, communicator: InstanceCommunicator, poptorch: ModuleType,
    popdist: ModuleType | None, step_module: PretrainingStep, plan, data_dir: Path | None,
) -> dict:
    """Evaluate on held-out text with an inference model, through the host backend's `validate`.

    The host function builds this instance's loader and summarises the sums. `IpuEvaluator`
    replaces its trainer and runs the batches on the IPUs.
    """
    stages = pipeline_stages(plan)
    options = build_inference_options(config, context, poptorch, stages, popdist)
    evaluator = IpuEvaluator(
        poptorch.inferenceModel(step_module, options), step_module, communicator,
        calls_of=inference_device_iterations(config, stages) * context.local_replicas,
        micro_batch_size=config.training.micro_batch_size,
    )
    host_context = DistributedContext(rank=context.instance, world_size=context.instances)
    try:
        return _host_validate(config, evaluator, data_dir, host_context)
    finally:
        evaluator.inference_model.detachFromDevice()


class IpuEvaluator:
    """The `evaluate` of the host trainer, run by a PopTorch inference model.

    Each call takes `calls_of` micro-batches. The last call is filled with copies whose labels are
    all ignored, and a short last micro-batch with such rows, so every batch counts and no filler does.
    """

    def __init__(self, inference_model, step_module: PretrainingStep, communicator: InstanceCommunicator,
                 *, calls_of: int, micro_batch_size: int):
        self.inference_model = inference_model
        self.step_module = step_module
        self.communicator = communicator
        self.calls_of = calls_of
        self.micro_batch_size = micro_batch_size

    def evaluate(self, batches, statistics=None) -> dict[str, float]:
        """Return the statistics of `PretrainingStep.OUTPUTS` summed over `batches` and all instances.

        `statistics` (the host's per-batch function) is not needed: the inference model returns
        the same sums and counts.
        """
        micro_batches = [_pad_rows(model_inputs(batch), self.micro_batch_size) for batch in batches]
        if not micro_batches:
            return {}
        micro_batches += [batching.neutral_micro_batch(micro_batches[0])] * (-len(micro_batches) % self.calls_of)
        self.step_module.eval()
        sums: dict[str, float] = {}
        no_weights = np.zeros((1, 2))  # the loss output is not used here
        for start in range(0, len(micro_batches), self.calls_of):
            # One "step" of calls_of micro-batches: their order within the call does not change the sums.
            call = micro_batches[start:start + self.calls_of]
            call_batch = batching.combined_training_batch([call], no_weights, 1, self.calls_of)
            for key, value in PretrainingStep.name_outputs(self.inference_model(**call_batch)).items():
                sums[key] = sums.get(key, 0.0) + value
        self.step_module.train()
        return dict(zip(sums, self.communicator.sum(np.array(list(sums.values())))))


def _pad_rows(batch: Batch, rows: int) -> Batch:
    """Fill a short last micro-batch to `rows` rows with label-free copies of its first row."""
    missing = rows - next(iter(batch.values())).shape[0]
    if missing <= 0:
        return batch
    filler = batching.neutral_micro_batch({key: value[:1] for key, value in batch.items()})
    return {key: torch.cat([value, filler[key].expand(missing, *filler[key].shape[1:])]) for key, value in batch.items()}


# ----- set-up helpers -----------------------------------------------------------------------------


def _import_popdist_if_installed() -> ModuleType | None:
    try:
        return import_popdist()
    except ImportError:
        if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
            raise  # several MPI processes: PopRun (or mpirun) started us, and PopDist is required
        return None


def _check_ipu_settings(config: RunConfig) -> None:
    training = config.training
    if training.precision == "bf16":
        raise ConfigError(
            f"training.precision bf16 ({config.provenance.get('training.precision', 'built-in default')}) is not "
            f"supported on IPUs; use fp16 (with loss_scaling) or fp32"
        )
    if config.execution.torch_compile:
        raise ConfigError("execution.torch_compile applies to CPU and CUDA runs; set it to false for execution.device ipu")


def _log_ipu_notes(config: RunConfig, context: PopRunContext) -> None:
    execution, training = config.execution, config.training
    if execution.device_iterations > 1:
        logger.info(
            "The learning rate changes once per host call of %d steps (execution.device_iterations), "
            "not every step as on the host", execution.device_iterations,
        )
    if training.precision != "fp16" and "training.loss_scaling" in config.provenance:
        logger.info("training.loss_scaling applies to fp16 only; training.precision is %s", training.precision)
    if context.under_poprun:
        logger.info("PopRun: instance %d of %d, %d local replicas, %d in total",
                    context.instance, context.instances, context.local_replicas, context.total_replicas)


def _prepare_data_once(config: RunConfig, context: PopRunContext, communicator: InstanceCommunicator):
    """Prepare the data on instance 0, then let the other instances read the finished folder."""
    if config.execution.synthetic_data:
        logger.info("execution.synthetic_data is true: the IPU generates its inputs, so no data is prepared")
        return None, None, config.model.vocab_size
    single = DistributedContext()
    if context.is_main:
        prepared = prepare_data(config, single)
    communicator.barrier()
    if not context.is_main:
        prepared = prepare_data(config, single)
    return prepared


def _restore(checkpoint: Path, optimizer, scheduler, stream: MicroBatchStream, context: PopRunContext,
             device_iterations: int) -> int:
    state = ckpt.load_training_state(checkpoint)
    if state.get("backend") != BACKEND:
        raise ckpt.CheckpointError(
            f"{checkpoint} was written by the host backend; its optimizer state does not load into PopTorch's "
            f"optimizers. Set training.resume_training_from_checkpoint false to start a new schedule from its weights"
        )
    if state["world_size"] != context.instances or len(state["data"]) != context.total_replicas:
        raise ckpt.CheckpointError(
            f"{checkpoint} was written by {state['world_size']} PopRun instance(s) with {len(state['data'])} replicas, "
            f"but this run has {context.instances} with {context.total_replicas}; resume with the same poprun layout"
        )
    step = int(state["step"])
    if step % device_iterations:
        raise ckpt.CheckpointError(
            f"{checkpoint} is at step {step}, which is not a multiple of execution.device_iterations "
            f"({device_iterations}); resume with the device_iterations that wrote it"
        )
    # NOTE: this relies on PopTorch 3.x's optimizer state_dict() carrying the moments kept on the
    # IPU; it has not been verified on hardware.
    optimizer.load_state_dict(state["trainer"]["optimizer"])
    scheduler.load_state_dict(state["trainer"]["scheduler"])
    offset = context.replica_offset
    stream.load_state_dict(state["data"][offset:offset + context.local_replicas])
    restore_rng_state(state["rng"])
    logger.info("Resumed from %s at step %d", checkpoint, step)
    return step


def _check_finite(sums: dict[str, float], step: int, config: RunConfig) -> None:
    if all(math.isfinite(value) for value in sums.values()):
        return
    training = config.training
    hint = (
        "lower training.loss_scaling or set training.auto_loss_scaling true"
        if training.precision == "fp16" else "lower training.learning_rate"
    )
    raise TrainingStopped(
        f"non-finite loss in steps {step + 1} to {step + config.execution.device_iterations} on the IPU "
        f"(statistics: {sums}); "
        f"the weights are no longer usable, so resume from the last checkpoint and {hint}"
    )


def _crossed(previous: int, current: int, every: int) -> bool:
    """Return True when a multiple of `every` lies in (previous, current]."""
    return current // every > previous // every
