"""SQuAD fine-tuning and evaluation on the host backend: `main(config)`.

The loop, top to bottom: load the checkpoint and its tokenizer, and turn the SQuAD files into
windowed features, counting and logging skipped examples. Fine-tune for `squad.epochs` through the
same trainer as pre-training and save the fine-tuned model. Then predict the evaluation file,
post-process the logits into answer texts and score them. The run folder receives `predictions.json`, `nbest_predictions.json` and
`eval_results.json`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines import squad as squad_data

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig
from .metrics import MetricsLogger, peak_flops, start_wandb
from .models import load_pretrained, question_answering_flops
from .optim import build_lr_scheduler, build_optimizer
from .runtime import DistributedContext, barrier, init_distributed, seed_everything, select_host_device, shutdown_distributed
from .squad_eval import evaluate_predictions, postprocess_predictions
from .trainer import Batch, HostTrainer, check_host_precision

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class SquadResult:
    run_dir: Path
    steps: int
    checkpoint: Path | None
    predictions_file: Path | None
    evaluation: dict | None


class QuestionAnsweringTask:
    """Start and end cross-entropy, averaged over every sample of the accumulation window."""

    def normalisers(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        samples = sum(batch["input_ids"].shape[0] for batch in micro_batches)
        return {"samples": torch.tensor(float(samples), dtype=torch.float64)}

    def loss(self, model, batch: Batch, normalisers: dict[str, torch.Tensor]):
        output = model(**{key: batch[key] for key in MODEL_INPUT_KEYS})
        start_loss = F.cross_entropy(output.start_logits.float(), batch["start_positions"], reduction="sum")
        end_loss = F.cross_entropy(output.end_logits.float(), batch["end_positions"], reduction="sum")
        loss_sum = (start_loss + end_loss) / 2
        statistics = {
            "loss_sum": loss_sum.detach(),
            "samples": torch.tensor(float(batch["input_ids"].shape[0])),
            "start_correct": (output.start_logits.argmax(-1) == batch["start_positions"]).sum(),
            "end_correct": (output.end_logits.argmax(-1) == batch["end_positions"]).sum(),
        }
        return loss_sum / normalisers["samples"].float(), statistics


def main(config: RunConfig) -> SquadResult:
    """Fine-tune on `squad.train_file` (when set), then predict and score `squad.predict_file` (when set)."""
    if config.execution.device == "ipu":
        raise NotImplementedError(
            "run_squad.py fine-tunes on the host backend only for now; set execution.device to cpu, cuda or auto"
        )
    device = select_host_device(config.execution.device)
    check_host_precision(config.training.precision, device)
    context = init_distributed(device)
    device = select_host_device(config.execution.device, context.local_rank)
    try:
        return _run(config, device, context)
    finally:
        shutdown_distributed()


def _run(config: RunConfig, device: torch.device, context: DistributedContext) -> SquadResult:
    training, squad = config.training, config.squad
    if not training.checkpoint_input_dir:
        raise ConfigError(
            "training.checkpoint_input_dir is not set; point it at a pre-training run, a step_<N> folder "
            "or a Hugging Face BERT folder"
        )
    if not squad.train_file and not squad.predict_file:
        raise ConfigError("neither squad.train_file nor squad.predict_file is set, so there is nothing to do")
    run_dir = Path(training.checkpoint_output_dir or f"output/{config.name}")
    if context.is_main:
        ckpt.prepare_run_dir(run_dir, resume=False, overwrite=training.overwrite_output_dir)
        config.save(run_dir / ckpt.RUN_CONFIG_FILE)
        logger.info("Run folder: %s\n%s", run_dir, config.format_summary(context.world_size))
    barrier(context)
    seed_everything(training.random_seed)

    # Checkpoint and tokenizer.
    source = ckpt.resolve_checkpoint(training.checkpoint_input_dir)
    tokenizer_path = Path(squad.tokenizer) if squad.tokenizer else _checkpoint_tokenizer(source)
    tokenizer = squad_data.load_tokenizer(tokenizer_path)
    # Check the input files before the slow model load.
    for key in ("train_file", "predict_file"):
        value = getattr(squad, key)
        # A value without a .json suffix may be a Hugging Face dataset name, read later.
        if value and str(value).endswith(".json") and not Path(value).is_file():
            raise FileNotFoundError(f"squad.{key} {value} not found; pass the path of a SQuAD JSON file")
    torch.manual_seed(training.random_seed)
    model = load_pretrained(source, "question_answering", **_dropout_overrides(config)).to(device)
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer at {tokenizer_path} has {len(tokenizer)} tokens but the checkpoint's vocab_size is "
            f"{model.config.vocab_size}; use the tokenizer the checkpoint was trained with (squad.tokenizer)"
        )
    logger.info("Fine-tuning %s (%s) with the tokenizer at %s", source, model.config.model_type, tokenizer_path)

    steps, saved = 0, None
    if squad.train_file:
        steps = _fine_tune(config, model, tokenizer, device, context, run_dir)
        if context.is_main:
            with tempfile.TemporaryDirectory() as tokenizer_dir:
                tokenizer.save_pretrained(tokenizer_dir)
                saved = ckpt.save_checkpoint(run_dir, steps, model, {"step": steps}, config, tokenizer_dir)
        barrier(context)

    predictions_file, evaluation = None, None
    if squad.predict_file and context.is_main:
        predictions_file, evaluation = _predict_and_evaluate(config, model, tokenizer, device, run_dir)
    barrier(context)
    return SquadResult(run_dir, steps, saved, predictions_file, evaluation)


def _checkpoint_tokenizer(checkpoint: Path) -> Path:
    """Return the tokenizer saved with a checkpoint: our `tokenizer/` folder, or a Hugging Face folder's own files."""
    for candidate in (checkpoint / ckpt.TOKENIZER_FOLDER, checkpoint):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.txt").is_file():
            return candidate
    raise ConfigError(
        f"checkpoint {checkpoint} has no tokenizer (no tokenizer/ folder, tokenizer.json or vocab.txt); "
        f"set squad.tokenizer to the vocabulary or tokenizer folder it was trained with"
    )


def _dropout_overrides(config: RunConfig) -> dict:
    """Apply the dropout keys that the YAML or command line set on top of the checkpoint's config."""
    keys = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    return {key: getattr(config.model, key) for key in keys if f"model.{key}" in config.explicit_keys}


# ----- fine-tuning --------------------------------------------------------------------------------


def _features(config: RunConfig, tokenizer, path: str, *, is_training: bool):
    squad = config.squad
    examples, _ = squad_data.read_squad_examples(
        path, is_training=is_training, version_2_with_negative=squad.version_2_with_negative
    )
    features, _ = squad_data.convert_examples_to_features(
        examples, tokenizer, max_seq_length=config.data.sequence_length, doc_stride=squad.doc_stride,
        max_query_length=squad.max_query_length, is_training=is_training, source=str(path),
    )
    return examples, features


def _fine_tune(config, model, tokenizer, device, context: DistributedContext, run_dir: Path) -> int:
    training, squad = config.training, config.squad
    _, features = _features(config, tokenizer, squad.train_file, is_training=True)
    dataset = squad_data.SquadFeatureDataset(features, is_training=True)
    derived = config.derived(context.world_size)

    # Batches of this process, epoch after epoch; a fractional last epoch stops part way.
    replicas = derived.replicas
    batches_per_epoch = len(dataset) // (training.micro_batch_size * replicas)
    if batches_per_epoch == 0:
        raise ConfigError(
            f"{len(dataset)} training features cannot fill one micro-batch of {training.micro_batch_size} on each "
            f"of {replicas} replicas; lower training.micro_batch_size or use more data"
        )
    epochs = squad.epochs
    micro_batches_per_replica = (
        math.ceil(epochs * batches_per_epoch) if epochs is not None else training.training_steps * training.gradient_accumulation
    )
    per_step = training.gradient_accumulation
    steps = math.ceil(micro_batches_per_replica / per_step)
    logger.info(
        "SQuAD fine-tuning: %d features, %d micro-batches of %d per replica per epoch, %d optimizer steps",
        len(dataset), batches_per_epoch, training.micro_batch_size, steps,
    )

    optimizer = build_optimizer(model, training)
    scheduler = build_lr_scheduler(optimizer, training, steps)
    trainer = HostTrainer(
        model, optimizer, scheduler, QuestionAnsweringTask(), device=device, context=context,
        precision=training.precision, max_grad_norm=training.max_grad_norm, loss_scaling=training.loss_scaling,
        auto_loss_scaling=training.auto_loss_scaling, min_loss_scale=training.min_loss_scale,
        max_nonfinite_steps=training.max_nonfinite_steps, compile_model=config.execution.torch_compile,
    )
    wandb_run = start_wandb(config.logging, config.to_dict(), run_dir, config.name) if (
        context.is_main and config.logging.wandb) else None
    flops = question_answering_flops(model.config, config.data.sequence_length)
    samples_per_step = training.micro_batch_size * training.gradient_accumulation * replicas
    metrics = MetricsLogger(
        run_dir, enabled=context.is_main, total_steps=steps, start_step=0, samples_per_step=samples_per_step,
        tokens_per_step=samples_per_step * config.data.sequence_length,
        flops_per_step=flops.training_per_row * samples_per_step, peak_flops_per_second=peak_flops(device, training.precision),
        progress_bar=not config.logging.disable_progress_bar, wandb_run=wandb_run,
    )

    replica_ids = [context.rank * config.execution.replication_factor + r for r in range(config.execution.replication_factor)]
    stream = _epoch_batches(dataset, training.micro_batch_size, replica_ids, replicas, training.random_seed)
    remaining = micro_batches_per_replica
    for step in range(steps):
        count = min(per_step, remaining)
        remaining -= count
        # A last, partial window still steps; the task normalises by the samples it really has.
        window = [batch for _ in range(count) for batch in next(stream)]
        learning_rate = scheduler.get_last_lr()[0]
        result = trainer.train_step(window, step)
        completed = step + 1
        if completed % config.logging.log_steps == 0 or completed == steps:
            samples = max(result.sums["samples"], 1.0)
            metrics.log_step(completed, {
                "loss": result.sums["loss_sum"] / samples,
                "start_accuracy": result.sums["start_correct"] / samples,
                "end_accuracy": result.sums["end_correct"] / samples,
                "learning_rate": learning_rate, "grad_norm": result.grad_norm,
            })
        if completed == 1:
            metrics.restart_interval(completed)
    metrics.close()
    return steps


def _epoch_batches(dataset, micro_batch_size: int, replica_ids: list[int], replicas: int, seed: int):
    """Yield, forever, one micro-batch per local replica: each epoch is a fresh seeded shuffle split across replicas."""
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(dataset), generator=generator)
        per_replica = len(dataset) // replicas
        shards = [order[r * per_replica:(r + 1) * per_replica] for r in replica_ids]
        for start in range(0, per_replica - micro_batch_size + 1, micro_batch_size):
            yield [_collate([dataset[int(i)] for i in shard[start:start + micro_batch_size]]) for shard in shards]
        epoch += 1


def _collate(items: list[dict]) -> Batch:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


# ----- prediction ---------------------------------------------------------------------------------


@torch.no_grad()
def _predict_and_evaluate(config, model, tokenizer, device, run_dir: Path):
    squad = config.squad
    examples, features = _features(config, tokenizer, squad.predict_file, is_training=False)
    dataset = squad_data.SquadFeatureDataset(features, is_training=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(config.training.micro_batch_size, 32), shuffle=False)
    model.eval()
    start_logits, end_logits, indices = [], [], []
    for batch in loader:
        output = model(**{key: batch[key].to(device) for key in MODEL_INPUT_KEYS})
        start_logits.append(output.start_logits.float().cpu().numpy())
        end_logits.append(output.end_logits.float().cpu().numpy())
        indices.extend(batch["feature_index"].tolist())
    predictions = postprocess_predictions(
        examples, features, np.concatenate(start_logits), np.concatenate(end_logits),
        n_best_size=squad.n_best_size, max_answer_length=squad.max_answer_length,
        version_2_with_negative=squad.version_2_with_negative,
        null_score_diff_threshold=squad.null_score_diff_threshold, output_dir=run_dir, feature_indices=indices,
    )
    null_odds = run_dir / "null_odds.json"
    evaluation = evaluate_predictions(
        squad.predict_file, predictions, null_odds=null_odds if squad.version_2_with_negative else None
    )
    (run_dir / "eval_results.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    logger.info("SQuAD evaluation on %s: %s", squad.predict_file, json.dumps(evaluation))
    return run_dir / "predictions.json", evaluation
