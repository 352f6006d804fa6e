"""Pre-training application: the main job end to end, split invariance, exact resume, run folders, guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ipu_groupbert import checkpoint as ckpt
from ipu_groupbert.config import load_config
from ipu_groupbert.models import build_model, model_config_from_dict
from ipu_groupbert.plot import plot_runs
from ipu_groupbert.pretraining import PretrainingTask, main
from ipu_groupbert.runtime import DistributedContext
from ipu_groupbert.trainer import HostTrainer, LossScaler, TrainingStopped
from pipelines.dataloader import create_pretraining_dataloader
from pipelines.pretraining_data import prepare_pretraining_data
from pipelines.shards import read_metadata
from pipelines.squad import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SEQUENCE_LENGTH = 64
VOCAB_SIZE = 2048


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory) -> Path:
    """The built-in Wikipedia sample, prepared once at sequence 64 with a small trained vocabulary."""
    return prepare_pretraining_data(
        [], tmp_path_factory.mktemp("data") / "wiki", vocab_file=None, vocab_size=VOCAB_SIZE,
        sequence_length=SEQUENCE_LENGTH, validation_fraction=0.05, seed=1,
    )


def small_run(run_dir: Path, data: Path | None, *overrides: str):
    """A GroupBERT small enough for many short CPU runs, on the prepared sample (or generated data)."""
    dataset = ["--data.input_files", f"[{data}]"] if data else ["--data.dataset", "generated"]
    return load_config("groupbert_tiny", [
        "--model.hidden_size", "64", "--model.intermediate_size", "256", "--model.num_attention_heads", "2",
        "--model.vocab_size", str(VOCAB_SIZE),
        "--data.sequence_length", str(SEQUENCE_LENGTH), "--data.mask_tokens", "10", "--data.dataloader_workers", "0",
        "--training.micro_batch_size", "8", "--training.training_steps", "6", "--training.lr_warmup", "0",
        "--training.checkpoint_output_dir", str(run_dir), "--training.validation_batches", "0",
        "--logging.log_steps", "1", "--logging.disable_progress_bar", "true", "--execution.device", "cpu",
        *dataset, *overrides,
    ])


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / ckpt.METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def training_records(run_dir: Path) -> list[dict]:
    return [record for record in read_metrics(run_dir) if "split" not in record]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors")


def assert_same_weights(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=atol, rtol=0, msg=key)


# ----- the main job -------------------------------------------------------------------------------


def test_main_job_trains_and_evaluates(prepared_data, tmp_path):
    config = small_run(tmp_path / "run", prepared_data, "--training.training_steps", "40",
                       "--training.validation_batches", "2", "--training.checkpoint_steps", "20")
    result = main(config)

    records = training_records(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 41))
    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate",
                "samples_per_sec", "tokens_per_sec", "training_flops"):
        assert key in records[0]
    first, last = records[0]["mlm_loss"], sum(r["mlm_loss"] for r in records[-5:]) / 5
    assert first == pytest.approx(torch.log(torch.tensor(float(VOCAB_SIZE))).item(), rel=0.1)
    assert last < first - 0.5

    assert result.validation is not None and result.validation["mlm_loss"] < first
    assert read_metrics(tmp_path / "run")[-1]["split"] == "validation"
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "run")] == [20, 40]
    final = tmp_path / "run" / "step_40"
    for name in ("config.json", "model.safetensors", ckpt.TRAINING_STATE_FILE, ckpt.RUN_CONFIG_FILE,
                 "tokenizer/tokenizer.json"):
        assert (final / name).is_file(), name
    assert json.loads((final / "config.json").read_text())["model_type"] == "groupbert"
    tokenizer = load_tokenizer(final / "tokenizer")
    assert len(tokenizer) == read_metadata(prepared_data).vocab_size
    assert tokenizer.tokenize("The history of the state") == ["the", "history", "of", "the", "state"]
    assert "execution" not in (final / "config.json").read_text()

    plot = plot_runs([tmp_path / "run"], tmp_path / "loss.png")
    assert plot.stat().st_size > 0


def test_existing_run_is_not_overwritten(tmp_path):
    main(small_run(tmp_path / "run", None, "--training.training_steps", "2"))
    with pytest.raises(ckpt.CheckpointError, match="already contains a run.*overwrite_output_dir"):
        main(small_run(tmp_path / "run", None, "--training.training_steps", "2"))
    main(small_run(tmp_path / "run", None, "--training.training_steps", "3", "--training.overwrite_output_dir", "true"))
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "run")] == [3]


def test_checkpoints_sort_as_integers(tmp_path):
    for step in (9, 10, 100):
        (tmp_path / f"step_{step}").mkdir()
    (tmp_path / ".step_200.partial-1").mkdir()  # an unfinished write is never listed
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [9, 10, 100]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_100"


# ----- loss normalisation -------------------------------------------------------------------------


def gradients_after_step(config, micro_batches: list[dict]) -> dict[str, torch.Tensor]:
    """Run one trainer step with learning rate 0 and return the gradients it accumulated."""
    torch.manual_seed(0)
    model = build_model(model_config_from_dict({"model_type": "groupbert", **config.model_config_dict()}), "pretraining")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = HostTrainer(
        model, optimizer, scheduler, PretrainingTask(), device=torch.device("cpu"), context=DistributedContext(),
        precision="fp32", max_grad_norm=None, loss_scaling=1.0, auto_loss_scaling=False, min_loss_scale=1.0,
        max_nonfinite_steps=1,
    )
    trainer.train_step(micro_batches, step=0)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def split_batch(batch: dict, size: int) -> list[dict]:
    rows = batch["input_ids"].shape[0]
    return [{key: value[start:start + size] for key, value in batch.items()} for start in range(0, rows, size)]


def test_gradients_do_not_depend_on_the_split(prepared_data, tmp_path):
    config = small_run(tmp_path, prepared_data)
    loader = create_pretraining_dataloader(
        prepared_data, split="train", micro_batch_size=8, sequence_length=SEQUENCE_LENGTH, mask_tokens=10, seed=3
    )
    batch = next(iter(loader))
    whole = gradients_after_step(config, [batch])
    split = gradients_after_step(config, split_batch(batch, 2))
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-4, msg=name)

    # A last, partial window (3 of 4 micro-batches) is normalised by what it holds.
    partial = gradients_after_step(config, split_batch(batch, 2)[:3])
    first_six = gradients_after_step(config, [{key: value[:6] for key, value in batch.items()}])
    for name in first_six:
        torch.testing.assert_close(partial[name], first_six[name], atol=1e-6, rtol=1e-4, msg=name)


def test_accumulation_matches_large_micro_batch(prepared_data, tmp_path):
    main(small_run(tmp_path / "large", prepared_data, "--training.training_steps", "3"))
    main(small_run(tmp_path / "split", prepared_data, "--training.training_steps", "3",
                   "--training.micro_batch_size", "2", "--training.gradient_accumulation", "4"))
    large, split = training_records(tmp_path / "large"), training_records(tmp_path / "split")
    for a, b in zip(large, split):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert_same_weights(weights(tmp_path / "split" / "step_3"), weights(tmp_path / "large" / "step_3"), atol=1e-5)


# ----- resume -------------------------------------------------------------------------------------


def test_resume_continues_exactly(prepared_data, tmp_path):
    # Dropout and a data-loading worker make the random states and the data position matter.
    extra = ("--model.hidden_dropout_prob", "0.1", "--data.dataloader_workers", "1", "--training.checkpoint_steps", "3")
    main(small_run(tmp_path / "straight", prepared_data, *extra))

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    os.symlink(tmp_path / "straight" / "step_3", resumed_dir / "step_3")
    main(small_run(resumed_dir, prepared_data, *extra, "--training.resume_training_from_checkpoint", "true"))

    straight, resumed = training_records(tmp_path / "straight"), training_records(resumed_dir)
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for a, b in zip(straight[3:], resumed):
        assert b["loss"] == a["loss"]
        assert b["learning_rate"] == a["learning_rate"]
    assert_same_weights(weights(resumed_dir / "step_6"), weights(tmp_path / "straight" / "step_6"), atol=0)


def test_learning_rate_after_resume(tmp_path):
    schedule = ("--training.learning_rate", "1e-5", "--training.lr_schedule", "linear",
                "--training.training_steps", "10", "--training.checkpoint_steps", "4", "--training.optimizer", "AdamW")
    main(small_run(tmp_path / "straight", None, *schedule))
    main(small_run(tmp_path / "resumed", None, *schedule, "--training.resume_training_from_checkpoint", "true",
                   "--training.checkpoint_input_dir", str(tmp_path / "straight" / "step_4")))
    resumed = training_records(tmp_path / "resumed")
    # Steps count from 1; step 5 is the first one after the checkpoint.
    assert resumed[0]["step"] == 5
    assert resumed[0]["learning_rate"] == pytest.approx(6e-6, rel=1e-9)
    assert resumed[1]["learning_rate"] == pytest.approx(5e-6, rel=1e-9)
    straight = {r["step"]: r["learning_rate"] for r in training_records(tmp_path / "straight")}
    assert all(r["learning_rate"] == pytest.approx(straight[r["step"]], rel=1e-12) for r in resumed)


def test_new_phase_loads_weights_with_fresh_schedule(tmp_path):
    main(small_run(tmp_path / "phase1", None, "--training.training_steps", "3"))
    main(small_run(tmp_path / "phase2", None, "--training.training_steps", "2", "--training.lr_warmup", "0.5",
                   "--training.checkpoint_input_dir", str(tmp_path / "phase1")))
    records = training_records(tmp_path / "phase2")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["learning_rate"] == 0.0  # the first warm-up step of a fresh schedule


def test_resume_with_other_length_fails(tmp_path):
    main(small_run(tmp_path / "run", None, "--training.training_steps", "2"))
    with pytest.raises(ValueError, match="belongs to a run of 2 steps but training.training_steps is 4"):
        main(small_run(tmp_path / "run", None, "--training.training_steps", "4",
                       "--training.resume_training_from_checkpoint", "true"))


def test_resume_without_checkpoint_fails(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no step_<N> checkpoint"):
        main(small_run(tmp_path / "run", None, "--training.resume_training_from_checkpoint", "true"))


# ----- data parallelism ---------------------------------------------------------------------------


def test_torchrun_matches_replication_in_one_process(tmp_path):
    common = ["--training.training_steps", "3", "--training.optimizer", "AdamW", "--training.learning_rate", "1e-3"]
    main(small_run(tmp_path / "single", None, *common, "--execution.replication_factor", "2"))

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(REPO_ROOT / "run_pretraining.py"), "--config", "groupbert_tiny",
    ] + [str(token) for token in _override_tokens(small_run(tmp_path / "torchrun", None, *common))]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    # Gradients are summed in a different order (gloo all-reduce against local accumulation),
    # so the weights agree to float32 rounding after AdamW's normalised updates.
    assert_same_weights(weights(tmp_path / "torchrun" / "step_3"), weights(tmp_path / "single" / "step_3"), atol=1e-5)
    single, distributed = training_records(tmp_path / "single"), training_records(tmp_path / "torchrun")
    for a, b in zip(single, distributed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def _override_tokens(config) -> list[str]:
    """Spell a loaded config's explicit keys as command-line overrides."""
    tokens = []
    for key in sorted(config.explicit_keys):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        text = json.dumps(value) if isinstance(value, (bool, list)) or value is None else str(value)
        tokens += [f"--{key}", text]
    return tokens


# ----- guards -------------------------------------------------------------------------------------


class NonFiniteTask(PretrainingTask):
    """Gives a non-finite loss, as a diverged model would."""

    def loss(self, model, batch, normalisers):
        loss, statistics = super().loss(model, batch, normalisers)
        return loss * float("nan"), statistics


def guarded_trainer(max_nonfinite_steps: int) -> HostTrainer:
    config = model_config_from_dict({"model_type": "groupbert", "vocab_size": 100, "hidden_size": 32,
                                     "num_hidden_layers": 1, "num_attention_heads": 1, "max_position_embeddings": 16})
    model = build_model(config, "pretraining")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return HostTrainer(
        model, optimizer, scheduler, NonFiniteTask(), device=torch.device("cpu"), context=DistributedContext(),
        precision="fp32", max_grad_norm=1.0, loss_scaling=1024.0, auto_loss_scaling=True, min_loss_scale=256.0,
        max_nonfinite_steps=max_nonfinite_steps,
    )


def tiny_batch() -> dict:
    return {
        "input_ids": torch.randint(5, 100, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "masked_lm_positions": torch.tensor([[1], [2]]),
        "masked_lm_labels": torch.tensor([[7], [8]]),
        "next_sentence_labels": torch.tensor([[0], [1]]),
    }


def test_nonfinite_loss_stops_fp32_run_at_once():
    trainer = guarded_trainer(max_nonfinite_steps=5)
    before = {name: p.clone() for name, p in trainer.model.named_parameters()}
    with pytest.raises(TrainingStopped, match="non-finite loss or gradients at step 1 in fp32"):
        trainer.train_step([tiny_batch()], step=0)
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_nonfinite_fp16_steps_are_skipped_then_stop():
    trainer = guarded_trainer(max_nonfinite_steps=3)
    # CPUs have no fp16 autocast, so this drives the fp16 loss-scaling logic with fp32 arithmetic.
    trainer.scaler = LossScaler(scale=1024.0, minimum=256.0, dynamic=True)
    before = {name: p.clone() for name, p in trainer.model.named_parameters()}
    for step in range(2):
        result = trainer.train_step([tiny_batch()], step=step)
        assert result.skipped
    assert trainer.scaler.scale == 256.0  # halved twice, and never below the floor
    with pytest.raises(TrainingStopped, match="3 steps in a row had non-finite fp16 gradients"):
        trainer.train_step([tiny_batch()], step=2)
    assert trainer.scaler.scale == 256.0
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_loss_scale_grows_after_clean_steps():
    scaler = LossScaler(scale=8.0, minimum=1.0, dynamic=True, growth_interval=2)
    scaler.update(True)
    scaler.update(True)
    assert scaler.scale == 16.0
    scaler.update(False)
    assert scaler.scale == 8.0


def test_fp16_on_cpu_is_rejected():
    with pytest.raises(NotImplementedError, match="use bf16 or fp32 on CPU"):
        main(load_config("groupbert_tiny", ["--training.precision", "fp16", "--execution.device", "cpu",
                                            "--data.dataset", "generated"]))


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    import run_pretraining

    arguments = ["--config", "groupbert_tiny", "--data.dataset", "generated", "--training.training_steps", "1",
                 "--model.hidden_size", "64", "--model.intermediate_size", "256", "--data.sequence_length", "32",
                 "--data.mask_tokens", "5", "--training.micro_batch_size", "2", "--execution.device", "cpu",
                 "--logging.disable_progress_bar", "true", "--training.checkpoint_output_dir", str(tmp_path / "run")]
    assert run_pretraining.cli(arguments) == 0
    capsys.readouterr()
    assert run_pretraining.cli(arguments) == 2
    error = capsys.readouterr().err
    assert "error: " in error
    assert "already contains a run" in error
    assert "Traceback" not in error


def test_interrupted_run_saves_and_resumes_exactly(tmp_path, monkeypatch):
    extra = ("--model.hidden_dropout_prob", "0.1")
    main(small_run(tmp_path / "straight", None, *extra))

    original_step = HostTrainer.train_step

    def interrupt_at_fourth_step(self, micro_batches, step):
        if step == 3:
            raise KeyboardInterrupt
        return original_step(self, micro_batches, step)

    monkeypatch.setattr(HostTrainer, "train_step", interrupt_at_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        main(small_run(tmp_path / "interrupted", None, *extra))
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "interrupted")] == [3]

    monkeypatch.setattr(HostTrainer, "train_step", original_step)
    main(small_run(tmp_path / "interrupted", None, *extra, "--training.resume_training_from_checkpoint", "true"))
    assert_same_weights(weights(tmp_path / "interrupted" / "step_6"), weights(tmp_path / "straight" / "step_6"), atol=0)
