"""Pre-training on the host backend (CPU or CUDA, alone or under torchrun): `main(config)`.

The loop, top to bottom: set up the process and the run folder, prepare the data, and build or
load the model. Then build the optimizer and schedule, or restore them when resuming. Each step
draws a window of micro-batches, takes the optimizer step, logs and checkpoints. At the end the
run saves and evaluates on held-out text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig
from .metrics import MetricsLogger, peak_flops, start_wandb
from .models import build_model, load_pretrained, model_config_from_dict, pretraining_flops
from .optim import build_lr_scheduler, build_optimizer
from .runtime import (
    DistributedContext,
    barrier,
    capture_rng_state,
    init_distributed,
    restore_rng_state,
    seed_everything,
    select_host_device,
    shutdown_distributed,
)
from .trainer import Batch, HostTrainer, TrainingStopped, check_host_precision

logger = logging.getLogger(__name__)

BATCH_KEYS_FOR_MODEL = (
    "input_ids", "token_type_ids", "attention_mask", "position_ids", "sequence_ids",
    "masked_lm_positions", "masked_lm_labels", "next_sentence_positions", "next_sentence_labels",
)


@dataclass
class PretrainingResult:
    """Paths and final results of a finished run."""

    run_dir: Path
    final_step: int
    last_metrics: dict | None
    validation: dict | None


class PretrainingTask:
    """MLM loss averaged over all masked tokens of the window, NSP loss over all its labelled sequences."""

    def normalisers(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        counts = {
            "mlm_tokens": sum((b["masked_lm_labels"] != -100).sum() for b in micro_batches),
            "nsp_sequences": sum((b["next_sentence_labels"] != -100).sum() for b in micro_batches),
        }
        return {key: torch.as_tensor(value, dtype=torch.float64) for key, value in counts.items()}

    def loss(self, model, batch: Batch, normalisers: dict[str, torch.Tensor]):
        output = model(**model_inputs(batch))
        loss = output.mlm_loss_sum / normalisers["mlm_tokens"].clamp(min=1).float()
        if output.nsp_loss_sum is not None:
            loss = loss + output.nsp_loss_sum / normalisers["nsp_sequences"].clamp(min=1).float()
        return loss, pretraining_statistics(output)


def model_inputs(batch: Batch) -> Batch:
    return {key: value for key, value in batch.items() if key in BATCH_KEYS_FOR_MODEL}


def pretraining_statistics(output) -> dict[str, torch.Tensor]:
    statistics = {
        "mlm_loss_sum": output.mlm_loss_sum,
        "mlm_count": output.mlm_count,
        "mlm_correct": output.mlm_correct,
    }
    if output.nsp_loss_sum is not None:
        statistics.update(nsp_loss_sum=output.nsp_loss_sum, nsp_count=output.nsp_count, nsp_correct=output.nsp_correct)
    return statistics


def summarise(sums: dict[str, float]) -> dict[str, float]:
    """Turn summed statistics into mean losses and accuracies."""
    mlm_count = max(sums.get("mlm_count", 0.0), 1.0)
    values = {
        "mlm_loss": sums["mlm_loss_sum"] / mlm_count,
        "mlm_accuracy": sums["mlm_correct"] / mlm_count,
    }
    loss = values["mlm_loss"]
    if "nsp_count" in sums:
        nsp_count = max(sums["nsp_count"], 1.0)
        values["nsp_loss"] = sums["nsp_loss_sum"] / nsp_count
        values["nsp_accuracy"] = sums["nsp_correct"] / nsp_count
        loss += values["nsp_loss"]
    return {"loss": loss, **values}


class MicroBatchStream:
    """Draw the micro-batches of one process, replica by replica, from one loader per local replica.

    A process running `replication_factor` replicas reads the data shards those replicas would read
    in a multi-process run, so one process with replication 2 reads the same samples per step as two
    processes with replication 1.
    """

    def __init__(self, loaders: list, accumulation: int):
        self.loaders = loaders
        self.accumulation = accumulation
        self.iterators = [iter(loader) for loader in loaders]

    def next_window(self) -> list[Batch]:
        return [next(iterator) for iterator in self.iterators for _ in range(self.accumulation)]

    def state_dict(self) -> list[dict]:
        return [loader.state_dict() for loader in self.loaders]

    def load_state_dict(self, states: list[dict]) -> None:
        if len(states) != len(self.loaders):
            raise ckpt.CheckpointError(
                f"the checkpoint contains data positions for {len(states)} replicas in this process but the run "
                f"has {len(self.loaders)}; resume with the same execution.replication_factor and process count"
            )
        for loader, state in zip(self.loaders, states):
            loader.load_state_dict(state)
        self.iterators = [iter(loader) for loader in self.loaders]


def main(config: RunConfig) -> PretrainingResult:
    """Pre-train the model that `config` describes; return where the results are."""
    if config.execution.device == "ipu" or (config.execution.device == "auto" and _ipu_available()):
        from .execution.ipu import run_pretraining_on_ipu

        return run_pretraining_on_ipu(config)

    device = select_host_device(config.execution.device)
    check_host_precision(config.training.precision, device)
    context = init_distributed(device)
    device = select_host_device(config.execution.device, context.local_rank)
    try:
        return _pretrain_on_host(config, device, context)
    finally:
        shutdown_distributed()


def _ipu_available() -> bool:
    try:
        from .execution.ipu import ipus_attached
    except ImportError:
        return False
    return ipus_attached()


def _pretrain_on_host(config: RunConfig, device: torch.device, context: DistributedContext) -> PretrainingResult:
    training, execution = config.training, config.execution
    derived = config.derived(context.world_size)
    run_dir = Path(training.checkpoint_output_dir or f"output/{config.name}")
    resume_from = find_resume_checkpoint(config, run_dir)

    # Set up the run folder and log the resolved configuration.
    if context.is_main:
        ckpt.prepare_run_dir(run_dir, resume=resume_from is not None, overwrite=training.overwrite_output_dir)
        config.save(run_dir / ckpt.RUN_CONFIG_FILE)
        logger.info("Run folder: %s\n%s", run_dir, config.format_summary(context.world_size))
        _log_ignored_ipu_keys(config)
    barrier(context)
    seed_everything(training.random_seed)

    # Data: raw inputs become shards once (on the main process); every replica reads its own shard.
    data_dir, tokenizer_dir, data_vocab_size = prepare_data(config, context)
    local_replicas = execution.replication_factor
    replica_ids = [context.rank * local_replicas + r for r in range(local_replicas)]
    loaders = [training_loader(config, data_dir, replica, derived.replicas) for replica in replica_ids]
    stream = MicroBatchStream(loaders, training.gradient_accumulation)

    # Model: new, or weights from checkpoint_input_dir (a new phase when not resuming).
    model = build_or_load_model(config, resume_from, data_vocab_size).to(device)
    optimizer = build_optimizer(model, training)
    scheduler = build_lr_scheduler(optimizer, training, training.training_steps)
    trainer = HostTrainer(
        model, optimizer, scheduler, PretrainingTask(),
        device=device, context=context, precision=training.precision, max_grad_norm=training.max_grad_norm,
        loss_scaling=training.loss_scaling, auto_loss_scaling=training.auto_loss_scaling,
        min_loss_scale=training.min_loss_scale, max_nonfinite_steps=training.max_nonfinite_steps,
        compile_model=execution.torch_compile,
    )
    start_step = 0
    if resume_from is not None:
        start_step = _restore(resume_from, trainer, stream, context, training.training_steps)

    metrics = create_metrics_logger(
        config, model.config, run_dir, is_main=context.is_main, world_size=context.world_size,
        start_step=start_step, peak_flops_per_second=peak_flops(device, training.precision),
    )

    def save(step: int, data_and_rng: tuple[list[dict], dict] | None = None) -> None:
        """Write step_<step>; `data_and_rng` replaces the current data position and random states."""
        if context.is_main:
            data_state, rng_state = data_and_rng or (stream.state_dict(), capture_rng_state())
            state = {
                "step": step,
                "trainer": trainer.state_dict(),
                "rng": rng_state,
                "data": data_state,
                "world_size": context.world_size,
                "training_steps": training.training_steps,
            }
            ckpt.save_checkpoint(run_dir, step, model, state, config, tokenizer_dir)
        barrier(context)

    # Train.
    step, last_record, saved_step = start_step, None, start_step if resume_from is not None else None
    logger.info("Training from step %d to %d", start_step, training.training_steps)
    before_step = None
    try:
        for step in range(start_step, training.training_steps):
            # Where data and random states stood before this step, for a checkpoint written if it fails.
            before_step = (stream.state_dict(), capture_rng_state())
            learning_rate = scheduler.get_last_lr()[0]
            result = trainer.train_step(stream.next_window(), step)
            completed = step + 1

            if completed % config.logging.log_steps == 0 or completed == training.training_steps:
                values = {**summarise(result.sums), "learning_rate": learning_rate,
                          "grad_norm": result.grad_norm, "skipped": result.skipped}
                if result.loss_scale is not None:
                    values["loss_scale"] = result.loss_scale
                last_record = metrics.log_step(completed, values)
            if completed == 1:
                # The first step includes one-off costs (allocation, torch.compile), so time from here.
                metrics.restart_interval(completed)

            if training.checkpoint_steps and completed % training.checkpoint_steps == 0:
                save(completed)
                saved_step = completed
        step = training.training_steps
    except (TrainingStopped, KeyboardInterrupt):
        # Keep the work done so far: the weights are those of the last completed step, and the data
        # position is the one before the failed step, so a resumed run repeats that step.
        if saved_step != step and step > 0:
            save(step, before_step)
        metrics.close()
        raise

    # Save, then evaluate on held-out text.
    if saved_step != step:
        save(step)
    validation = None
    if training.validation_batches > 0:
        validation = validate(config, trainer, data_dir, context)
        metrics.log_event({"split": "validation", "step": step, **validation})
    metrics.close()
    return PretrainingResult(run_dir=run_dir, final_step=step, last_metrics=last_record, validation=validation)


def create_metrics_logger(
    config: RunConfig, model_config, run_dir: Path, *, is_main: bool, world_size: int, start_step: int,
    peak_flops_per_second: float | None,
) -> MetricsLogger:
    """Create the pre-training metrics logger, and the wandb run when enabled, for either backend."""
    data = config.data
    derived = config.derived(world_size)
    flops = pretraining_flops(
        model_config, data.sequence_length, data.mask_tokens,
        next_sentence_prediction=data.next_sentence_prediction,
        sequences_per_row=data.max_sequences_per_pack if data.packed_data else 1,
    )
    wandb_run = None
    if is_main and config.logging.wandb:
        wandb_run = start_wandb(config.logging, config.to_dict(), run_dir, config.name)
    return MetricsLogger(
        run_dir, enabled=is_main, total_steps=config.training.training_steps, start_step=start_step,
        samples_per_step=derived.global_batch_size, tokens_per_step=derived.tokens_per_step,
        flops_per_step=flops.training_per_row * derived.global_batch_size,
        peak_flops_per_second=peak_flops_per_second,
        progress_bar=not config.logging.disable_progress_bar, wandb_run=wandb_run,
    )


def find_resume_checkpoint(config: RunConfig, run_dir: Path) -> Path | None:
    """Return the checkpoint to resume from, or None for a new run."""
    training = config.training
    if not training.resume_training_from_checkpoint:
        return None
    if training.checkpoint_input_dir:
        return ckpt.resolve_checkpoint(training.checkpoint_input_dir)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise ckpt.CheckpointError(
            f"training.resume_training_from_checkpoint is true but {run_dir} has no step_<N> checkpoint; "
            f"set training.checkpoint_input_dir to the checkpoint to resume, or set the option false"
        )
    return latest


def _restore(
    checkpoint: Path, trainer: HostTrainer, stream: MicroBatchStream, context: DistributedContext, training_steps: int
) -> int:
    state = ckpt.load_training_state(checkpoint)
    if state.get("training_steps", training_steps) != training_steps:
        # The schedule (warm-up and decay) is a function of the run's length, so a resumed run with
        # another length would not continue the same run.
        raise ConfigError(
            f"{checkpoint} belongs to a run of {state['training_steps']} steps but training.training_steps is "
            f"{training_steps}; resume with training_steps {state['training_steps']}, or start a new phase from its "
            f"weights with resume_training_from_checkpoint false and checkpoint_input_dir {checkpoint}"
        )
    if state["world_size"] != context.world_size:
        raise ckpt.CheckpointError(
            f"{checkpoint} was written by {state['world_size']} processes but this run has {context.world_size}; "
            f"resume with the same number of torchrun processes"
        )
    trainer.load_state_dict(state["trainer"])
    stream.load_state_dict(state["data"])
    restore_rng_state(state["rng"])
    logger.info("Resumed from %s at step %d", checkpoint, state["step"])
    return int(state["step"])


def build_or_load_model(config: RunConfig, resume_from: Path | None, data_vocab_size: int):
    model_config = model_config_from_dict({"model_type": config.model.model_type, **config.model_config_dict()})
    if data_vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {data_vocab_size} tokens but model.vocab_size is {model_config.vocab_size}; "
            f"set model.vocab_size to at least {data_vocab_size}"
        )
    if data_vocab_size < model_config.vocab_size:
        logger.info(
            "The tokenizer has %d tokens and model.vocab_size is %d, so %d embedding rows are never used",
            data_vocab_size, model_config.vocab_size, model_config.vocab_size - data_vocab_size,
        )
    source = resume_from or (
        ckpt.resolve_checkpoint(config.training.checkpoint_input_dir) if config.training.checkpoint_input_dir else None
    )
    if source is None:
        torch.manual_seed(config.training.random_seed)
        return build_model(model_config, "pretraining")
    model = load_pretrained(source, "pretraining")
    _check_same_architecture(model.config, model_config, source)
    if resume_from is None:
        logger.info("Loaded weights from %s; the optimizer and schedule start fresh", source)
    return model


def _check_same_architecture(loaded, configured, source: Path) -> None:
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    different = {k: (getattr(loaded, k), getattr(configured, k)) for k in keys if getattr(loaded, k) != getattr(configured, k)}
    if different:
        details = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in different.items())
        raise ConfigError(
            f"checkpoint {source} does not match the model section ({details}); use a config of the "
            f"checkpoint's size or another checkpoint"
        )


def _log_ignored_ipu_keys(config: RunConfig) -> None:
    ipu_only = [
        "device_iterations", "ipus_per_replica", "layers_per_ipu", "matmul_proportion",
        "recompute_checkpoint_every_layer", "embedding_serialization_factor", "enable_half_partials",
        "optimizer_state_offchip", "replicated_tensor_sharding", "executable_cache_dir", "compile_only",
        "synthetic_data", "enable_stochastic_rounding",
    ]
    set_keys = [key for key in ipu_only if f"execution.{key}" in config.explicit_keys]
    if set_keys:
        logger.info("Host backend: ignoring IPU-only keys %s", ", ".join(f"execution.{k}" for k in set_keys))


# ----- data ---------------------------------------------------------------------------------------


def prepare_data(config: RunConfig, context: DistributedContext) -> tuple[Path | None, Path | None, int]:
    """Return (prepared data folder, tokenizer folder, tokenizer vocabulary size); None folders for generated data."""
    data = config.data
    if data.dataset == "generated":
        return None, None, config.model.vocab_size

    from pipelines.pretraining_data import prepare_pretraining_data
    from pipelines.shards import is_prepared_data, read_metadata

    inputs = [str(path) for path in data.input_files]
    prepared = [Path(p) for p in inputs if is_prepared_data(p)]
    if prepared and len(prepared) != len(inputs):
        raise ConfigError(
            "data.input_files mixes prepared data folders and raw inputs; list either one prepared folder or raw files"
        )
    if len(prepared) > 1:
        raise ConfigError("data.input_files lists several prepared data folders; prepare them together into one")
    if prepared:
        data_dir = prepared[0]
    else:
        data_dir = Path(data.prepared_data_dir) / _prepared_name(config)
        if context.is_main:
            prepare_pretraining_data(
                inputs, data_dir, vocab_file=data.vocab_file, vocab_size=config.model.vocab_size,
                sequence_length=data.sequence_length, short_seq_prob=data.short_seq_prob,
                next_sentence_prediction=data.next_sentence_prediction,
                validation_fraction=data.validation_fraction, seed=config.training.random_seed,
            )
        barrier(context)
    info = read_metadata(data_dir)
    if info.sequence_length != data.sequence_length:
        raise ConfigError(
            f"prepared data {data_dir} has sequence length {info.sequence_length} but data.sequence_length is "
            f"{data.sequence_length}; set data.sequence_length to {info.sequence_length} or prepare the data again"
        )
    return data_dir, _tokenizer_folder(info, context), info.vocab_size


def _tokenizer_folder(info, context: DistributedContext) -> Path:
    """Save the data's tokenizer as a Hugging Face tokenizer folder, so checkpoints carry it for fine-tuning."""
    folder = info.path / "hf_tokenizer"
    if context.is_main and not (folder / "tokenizer.json").is_file():
        tokenizer = bert_tokenizer_from_vocab(info.vocab_file, lowercase=info.lowercase, strip_accents=info.strip_accents)
        staging = info.path / f".hf_tokenizer.partial-{os.getpid()}"
        tokenizer.save_pretrained(staging)
        shutil.copyfile(info.vocab_file, staging / "vocab.txt")
        os.replace(staging, folder)
    barrier(context)
    return folder


def bert_tokenizer_from_vocab(vocab_file: Path, *, lowercase: bool, strip_accents: bool):
    """Build BERT's fast WordPiece tokenizer ([CLS] A [SEP] B [SEP]) from a vocabulary file.

    Built from `tokenizers` parts because the `BertTokenizerFast(vocab_file=...)` constructor of
    transformers 5 ignores the file and returns a tokenizer of the special tokens only.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for index, line in enumerate(Path(vocab_file).read_text(encoding="utf-8").splitlines()):
        vocab.setdefault(line.rstrip("\n"), index)
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
        cls_token="[CLS]", mask_token="[MASK]", do_lower_case=lowercase,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _prepared_name(config: RunConfig) -> str:
    """Name the prepared folder after its inputs and settings, so different choices never collide."""
    data = config.data
    settings = {
        "inputs": [str(Path(p).resolve()) if Path(p).exists() else str(p) for p in data.input_files],
        "vocab_file": data.vocab_file, "vocab_size": config.model.vocab_size,
        "sequence_length": data.sequence_length, "short_seq_prob": data.short_seq_prob,
        "nsp": data.next_sentence_prediction, "validation_fraction": data.validation_fraction,
        "seed": config.training.random_seed,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    stem = Path(str(data.input_files[0])).name.split(".")[0] if data.input_files else "wikipedia-sample"
    return f"{stem}-seq{data.sequence_length}-{digest}"


def _loader_arguments(config: RunConfig) -> dict:
    data = config.data
    return {
        "micro_batch_size": config.training.micro_batch_size,
        "sequence_length": data.sequence_length,
        "mask_tokens": data.mask_tokens,
        "packed_data": data.packed_data,
        "max_sequences_per_pack": data.max_sequences_per_pack,
        "seed": config.training.random_seed,
    }


def training_loader(config: RunConfig, data_dir: Path | None, replica: int, replicas: int):
    from pipelines.dataloader import create_pretraining_dataloader
    from pipelines.generated import create_generated_dataloader

    data = config.data
    if data_dir is None:
        return create_generated_dataloader(
            vocab_size=config.model.vocab_size, rank=replica, world_size=replicas, repeat=True,
            mlm_probability=data.mlm_probability, next_sentence_prediction=data.next_sentence_prediction,
            **_loader_arguments(config),
        )
    return create_pretraining_dataloader(
        data_dir, split="train", mlm_probability=data.mlm_probability,
        next_sentence_prediction=data.next_sentence_prediction, whole_word_masking=data.whole_word_masking,
        num_workers=data.dataloader_workers, rank=replica, world_size=replicas, drop_last=True, repeat=True,
        **_loader_arguments(config),
    )


def validate(config: RunConfig, trainer: HostTrainer, data_dir: Path | None, context: DistributedContext) -> dict:
    """Evaluate MLM and NSP loss and accuracy on `training.validation_batches` batches of held-out text."""
    from pipelines.dataloader import create_pretraining_dataloader
    from pipelines.generated import create_generated_dataloader

    data = config.data
    if data_dir is None:
        loader = create_generated_dataloader(
            vocab_size=config.model.vocab_size, rank=context.rank, world_size=context.world_size,
            mlm_probability=data.mlm_probability, next_sentence_prediction=data.next_sentence_prediction,
            **{**_loader_arguments(config), "seed": config.training.random_seed + 1},
        )
    else:
        loader = create_pretraining_dataloader(
            data_dir, split="validation", mlm_probability=data.mlm_probability,
            next_sentence_prediction=data.next_sentence_prediction, whole_word_masking=data.whole_word_masking,
            num_workers=0, rank=context.rank, world_size=context.world_size, drop_last=False,
            **_loader_arguments(config),
        )
    batches = min(config.training.validation_batches, len(loader))
    if batches == 0:
        logger.warning("The validation split is empty, so no evaluation ran; raise data.validation_fraction")
        return {}
    if batches < config.training.validation_batches:
        logger.warning(
            "The validation split has %d batches, fewer than training.validation_batches (%d); evaluating all %d",
            batches, config.training.validation_batches, batches,
        )
    iterator = iter(loader)
    sums = trainer.evaluate(
        (next(iterator) for _ in range(batches)),
        lambda model, batch: pretraining_statistics(model(**model_inputs(batch))),
    )
    result = summarise(sums)
    result["validation_batches"] = batches
    result["perplexity"] = math.exp(min(result["mlm_loss"], 50.0))
    return result
