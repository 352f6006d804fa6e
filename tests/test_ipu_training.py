"""The IPU pre-training loop on CPU, against the PopTorch test double.

The double runs the plain model per micro-batch and never updates weights. So these tests check
the mapping and the bookkeeping: combined batches fed through poptorch.DataLoader and their loss
weights, compilation before the steps,
one setOptimizer per host call with the scheduled learning rate, and statistics equal to the
host's on the same data. They also cover checkpoints, resume, validation and PopRun instances.
They verify nothing about execution or training on IPUs.
"""

import json

import numpy as np
import pytest
import torch

from ipu_groupbert import checkpoint as ckpt
from ipu_groupbert.config import load_config
from ipu_groupbert.execution import batching
from ipu_groupbert.execution.distributed import PopRunContext
from ipu_groupbert.execution.ipu import PretrainingStep, run_pretraining_on_ipu
from ipu_groupbert.execution.ipu_options import build_training_options
from ipu_groupbert.execution.parallelize import parallelize
from ipu_groupbert.models import build_model, load_pretrained, model_config_from_dict, set_attention_backend
from ipu_groupbert.optim import learning_rates
from ipu_groupbert.pretraining import (
    MicroBatchStream,
    PretrainingTask,
    training_loader,
    model_inputs,
    pretraining_statistics,
    summarise,
)
from poptorch_double import installed, poptorch_double  # noqa: F401  (fixture)

ACCUMULATION, REPLICAS, DEVICE_ITERATIONS, STEPS = 2, 2, 2, 4


def _config(run_dir, *extra):
    overrides = [
        "--device", "ipu", "--dataset", "generated", "--vocab-size", "1024", "--hidden-size", "64",
        "--num-attention-heads", "2", "--intermediate-size", "256", "--num-hidden-layers", "2",
        "--sequence-length", "32", "--mask-tokens", "5", "--micro-batch-size", "4",
        "--gradient-accumulation", str(ACCUMULATION), "--replication-factor", str(REPLICAS),
        "--device-iterations", str(DEVICE_ITERATIONS), "--training-steps", str(STEPS),
        "--ipus-per-replica", "2", "--layers-per-ipu", "[1,1]", "--matmul-proportion", "0.2",
        "--embedding-serialization-factor", "2", "--recompute-checkpoint-every-layer", "true",
        "--optimizer", "LAMB", "--learning-rate", "0.01", "--max-grad-norm", "null", "--lr-warmup", "0.5",
        "--precision", "fp32", "--log-steps", "2", "--checkpoint-steps", "2", "--validation-batches", "3",
        "--dataloader-workers", "0", "--disable-progress-bar", "true", "--checkpoint-output-dir", str(run_dir),
        "--executable-cache-dir", str(run_dir.parent / "cache"),
    ]
    return load_config("groupbert_tiny", overrides + list(extra))


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]


def _host_sums(model, batches):
    sums = {}
    with torch.no_grad():
        for batch in batches:
            for key, value in pretraining_statistics(model(**model_inputs(batch))).items():
                sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def _windows(config, replicas=REPLICAS, first_replica=0):
    loaders = [training_loader(config, None, first_replica + r, replicas) for r in range(config.execution.replication_factor)]
    return MicroBatchStream(loaders, config.training.gradient_accumulation)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One complete run shared by the tests that only read its results (the recorder is reset per test)."""
    run_dir = tmp_path_factory.mktemp("ipu") / "run"
    with installed() as record:
        config = _config(run_dir)
        result = run_pretraining_on_ipu(config)
        # Lists as they are now: later tests reset the recorder, which replaces them.
        snapshot = type("Snapshot", (), {"executors": record.executors, "optimizers": record.optimizers,
                                          "options": record.options, "data_loaders": record.data_loaders,
                                          "batches_read_ahead": record.batches_read_ahead})
    return config, result, snapshot, run_dir


def test_loss_weights_give_host_window_loss(tmp_path, poptorch_double):
    import poptorch

    config = _config(tmp_path / "run")
    torch.manual_seed(0)
    model = build_model(model_config_from_dict({"model_type": "groupbert", **config.model_config_dict()}), "pretraining")
    stream = _windows(config)
    windows = [[model_inputs(b) for b in stream.next_window()] for _ in range(DEVICE_ITERATIONS)]
    counts = np.stack([batching.token_counts(window) for window in windows])
    weights = batching.loss_weights(counts, ACCUMULATION, REPLICAS)
    combined = batching.combined_training_batch(windows, weights, REPLICAS, ACCUMULATION)

    reference = build_model(model.config, "pretraining")
    reference.load_state_dict(model.state_dict())
    set_attention_backend(reference, "matmul")
    parallelize(model, config, "pretraining")
    options = build_training_options(config, PopRunContext(local_replicas=REPLICAS), poptorch)
    outputs = poptorch.trainingModel(PretrainingStep(model), options)(**combined)
    per_micro_batch_loss = outputs[0].reshape(DEVICE_ITERATIONS, ACCUMULATION * REPLICAS)

    task = PretrainingTask()
    for step, window in enumerate(windows):
        normalisers = task.normalisers(window)
        with torch.no_grad():
            host_loss = sum(task.loss(reference, batch, normalisers)[0] for batch in window)
        # PopTorch averages over micro-batches and replicas; that mean is the host's window loss.
        ipu_loss = per_micro_batch_loss[step].sum() / (ACCUMULATION * REPLICAS)
        torch.testing.assert_close(ipu_loss, host_loss, rtol=1e-5, atol=1e-6)


def test_combined_batch_layout():
    def micro_batch(step, replica, index):
        value = step * 100 + replica * 10 + index
        return {"input_ids": torch.full((2, 3), value), "masked_lm_labels": torch.full((2, 1), value),
                "next_sentence_labels": torch.full((2, 1), 0)}

    # MicroBatchStream order: replica by replica, accumulation within a replica.
    windows = [[micro_batch(s, r, a) for r in range(2) for a in range(3)] for s in range(2)]
    combined = batching.combined_training_batch(windows, np.array([[1.0, 2.0], [3.0, 4.0]]), replicas=2, accumulation=3)
    rows = combined["input_ids"][::2, 0].tolist()
    # PopART reads [device_iterations, accumulation, replicas, micro-batch].
    assert rows == [s * 100 + r * 10 + a for s in range(2) for a in range(3) for r in range(2)]
    assert combined["mlm_loss_weight"].tolist() == [1.0] * 12 + [3.0] * 12
    assert combined["nsp_loss_weight"].tolist() == [2.0] * 12 + [4.0] * 12


def test_combined_batch_rejects_ragged_micro_batches():
    full = {"input_ids": torch.zeros(4, 8, dtype=torch.long)}
    short = {"input_ids": torch.zeros(3, 8, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"micro-batch 1 has input_ids of shape \(3, 8\).*drop the last"):
        batching.concatenate([full, short])


def test_compiles_once_before_steps(finished_run):
    config, result, record, _ = finished_run
    training, inference = record.executors
    assert training.training and not inference.training
    assert training.compile_inputs is not None
    assert set(training.compile_inputs) >= {"input_ids", "masked_lm_labels", "mlm_loss_weight", "nsp_loss_weight"}
    rows = 4 * ACCUMULATION * REPLICAS * DEVICE_ITERATIONS
    assert training.compile_inputs["input_ids"][0] == (rows, 32)
    assert training.calls == STEPS // DEVICE_ITERATIONS
    assert not training.attached
    assert not inference.attached
    assert result.final_step == STEPS


def test_learning_rate_pushed_each_call(finished_run):
    config, _, record, _ = finished_run
    training = record.executors[0]
    schedule = learning_rates(config.training, STEPS) + [0.0]  # the rate after the last step
    expected = [schedule[step] for step in range(DEVICE_ITERATIONS, STEPS + 1, DEVICE_ITERATIONS)]
    assert [rates[0] for rates in training.set_optimizer_calls] == pytest.approx(expected)
    assert all(len(set(rates)) == 1 for rates in training.set_optimizer_calls)
    (name, arguments), = record.optimizers
    assert name == "LAMB"
    assert arguments["lr"] == 0.01


def test_metrics_match_host_on_same_data(finished_run):
    config, result, _, run_dir = finished_run
    records = [r for r in _metrics(run_dir) if "loss" in r and "split" not in r]
    assert [r["step"] for r in records] == [2, 4]
    assert [r["learning_rate"] for r in records] == pytest.approx(learning_rates(config.training, STEPS)[0::2])

    # The double never updates weights, so every checkpoint contains the initial weights.
    model = load_pretrained(run_dir / "step_2", "pretraining").eval()
    stream = _windows(config)
    for record in records:
        batches = [batch for _ in range(DEVICE_ITERATIONS) for batch in stream.next_window()]
        expected = summarise(_host_sums(model, batches))
        for key in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
            assert record[key] == pytest.approx(expected[key], rel=1e-5), (record["step"], key)
    assert result.last_metrics["step"] == STEPS


def test_compile_time_logged_apart(finished_run):
    events = [r for r in _metrics(finished_run[3]) if r.get("event") == "compile"]
    assert len(events) == 1
    assert events[0]["compile_seconds"] >= 0.0


def test_checkpoints_are_plain_fp32(finished_run):
    run_dir = finished_run[3]
    assert [step for step, _ in ckpt.list_checkpoints(run_dir)] == [2, 4]
    state = ckpt.load_training_state(run_dir / "step_4")
    assert state["backend"] == "ipu"
    assert state["step"] == 4
    assert len(state["data"]) == REPLICAS
    assert state["world_size"] == 1
    model = load_pretrained(run_dir / "step_4", "pretraining")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model.bert.embeddings.word_embeddings) is torch.nn.Embedding
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_validation_counts_every_batch(finished_run):
    config, result, _, run_dir = finished_run
    assert result.validation["validation_batches"] == 3

    from pipelines.generated import create_generated_dataloader

    from ipu_groupbert.pretraining import _loader_arguments

    data = config.data
    loader = create_generated_dataloader(
        vocab_size=1024, rank=0, world_size=1, mlm_probability=data.mlm_probability,
        next_sentence_prediction=data.next_sentence_prediction,
        **{**_loader_arguments(config), "seed": config.training.random_seed + 1},
    )
    iterator = iter(loader)
    model = load_pretrained(run_dir / "step_4", "pretraining").eval()
    expected = summarise(_host_sums(model, [next(iterator) for _ in range(3)]))
    assert result.validation["mlm_loss"] == pytest.approx(expected["mlm_loss"], rel=1e-5)
    assert result.validation["nsp_accuracy"] == pytest.approx(expected["nsp_accuracy"], rel=1e-5)


def test_resume_continues_data_and_schedule(finished_run, tmp_path, poptorch_double):
    run_dir = finished_run[3]
    first = {r["step"]: r for r in _metrics(run_dir) if "loss" in r and "split" not in r}

    resumed = _config(tmp_path / "resumed", "--resume-training-from-checkpoint", "true",
                      "--checkpoint-input-dir", str(run_dir / "step_2"))
    result = run_pretraining_on_ipu(resumed)

    training = poptorch_double.executors[0]
    assert training.calls == 1
    assert result.final_step == STEPS
    records = [r for r in _metrics(tmp_path / "resumed") if "loss" in r and "split" not in r]
    assert [r["step"] for r in records] == [4]
    # Same data position and schedule as the uninterrupted run's last call.
    for key in ("loss", "mlm_accuracy", "learning_rate"):
        assert records[0][key] == pytest.approx(first[4][key], rel=1e-6)
    # The very same inputs, loss weights included, as the uninterrupted run's second call.
    uninterrupted = finished_run[2].executors[0].call_inputs[1]
    (resumed_inputs,) = training.call_inputs
    assert resumed_inputs.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed_inputs[key], value), key


def test_interrupt_saves_last_finished_step(finished_run, tmp_path, poptorch_double):
    first = {r["step"]: r for r in _metrics(finished_run[3]) if "loss" in r and "split" not in r}
    poptorch_double.interrupt_at_call = 2
    with pytest.raises(KeyboardInterrupt):
        run_pretraining_on_ipu(_config(tmp_path / "run", "--checkpoint-steps", "0"))
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]

    # The batch drawn for the interrupted call is not counted as read: resuming repeats it.
    poptorch_double.interrupt_at_call = None
    run_pretraining_on_ipu(_config(tmp_path / "resumed", "--resume-training-from-checkpoint", "true",
                                   "--checkpoint-input-dir", str(tmp_path / "run" / "step_2")))
    records = [r for r in _metrics(tmp_path / "resumed") if "loss" in r and "split" not in r]
    assert records[0]["step"] == 4
    assert records[0]["loss"] == pytest.approx(first[4]["loss"], rel=1e-6)


def test_host_checkpoint_not_resumed(finished_run, tmp_path, poptorch_double):
    import shutil

    step_dir = tmp_path / "step_2"
    shutil.copytree(finished_run[3] / "step_2", step_dir)
    state = ckpt.load_training_state(step_dir)
    del state["backend"]
    torch.save(state, step_dir / ckpt.TRAINING_STATE_FILE)
    config = _config(tmp_path / "again", "--resume-training-from-checkpoint", "true",
                     "--checkpoint-input-dir", str(step_dir))
    with pytest.raises(ckpt.CheckpointError, match="written by the host backend"):
        run_pretraining_on_ipu(config)


def test_compile_only_stops_after_compiling(tmp_path, poptorch_double):
    config = _config(tmp_path / "run", "--compile-only", "true")
    result = run_pretraining_on_ipu(config)
    (training,) = poptorch_double.executors
    assert training.compile_inputs is not None
    assert training.calls == 0
    assert result.final_step == 0
    assert result.last_metrics["compile_seconds"] >= 0.0
    assert poptorch_double.options[0].offline_ipu_version == 2
    assert not (tmp_path / "run").exists()


class _OtherInstanceCommunicator:
    """Instance 1 of 2, whose peer (instance 0) has identical counts and statistics."""

    def __init__(self):
        self.gathers = 0
        self.barriers = 0

    def sum(self, values):
        return 2 * np.asarray(values, dtype=np.float64)

    def barrier(self):
        self.barriers += 1

    def gather(self, value):
        self.gathers += 1
        assert len(value) == 1  # this instance's one local replica
        return None


def test_second_poprun_instance_writes_nothing(tmp_path, poptorch_double):
    import poptorch

    poptorch_double.poprun = poptorch.PopRunEnvironment(instances=2, instance=1, total_replicas=2)
    communicator = _OtherInstanceCommunicator()
    config = _config(tmp_path / "run", "--validation-batches", "0")
    result = run_pretraining_on_ipu(config, communicator=communicator)

    assert not (tmp_path / "run").exists()
    (training,) = poptorch_double.executors
    assert training.calls == STEPS // DEVICE_ITERATIONS
    assert training.options.replication_factor == 1
    assert (training.options.Distributed.processId, training.options.Distributed.numProcesses) == (1, 2)
    assert communicator.gathers == 2  # checkpoints at steps 2 and 4, written by instance 0
    assert result.final_step == STEPS


def test_second_instance_reads_its_own_shard(tmp_path, poptorch_double):
    import poptorch

    poptorch_double.poprun = poptorch.PopRunEnvironment(instances=2, instance=1, total_replicas=2)
    config = _config(tmp_path / "run", "--validation-batches", "0", "--training-steps", "2")
    run_pretraining_on_ipu(config, communicator=_OtherInstanceCommunicator())
    training = poptorch_double.executors[0]
    assert training.compile_inputs["input_ids"][0] == (4 * ACCUMULATION * 1 * DEVICE_ITERATIONS, 32)

    # Global replica 1 of 2: the shard the host's second replica reads.
    stream = _windows(config.updated({"execution.replication_factor": 1}, source="test"), replicas=2, first_replica=1)
    expected = torch.cat([b["input_ids"] for b in batching.popart_order(
        [[model_inputs(b) for b in stream.next_window()] for _ in range(DEVICE_ITERATIONS)], 1, ACCUMULATION)])
    assert torch.equal(training.compiled_with["input_ids"], expected)


def _expected_calls(config, calls):
    """The combined batches of the first `calls` calls, assembled directly from a fresh stream."""
    stream = _windows(config)
    expected = []
    for _ in range(calls):
        windows = [[model_inputs(b) for b in stream.next_window()] for _ in range(DEVICE_ITERATIONS)]
        weights = batching.loss_weights(np.stack([batching.token_counts(w) for w in windows]), ACCUMULATION, REPLICAS)
        expected.append(batching.combined_training_batch(windows, weights, REPLICAS, ACCUMULATION))
    return expected, stream


def test_data_loader_built_from_training_options(finished_run):
    _, _, record, _ = finished_run
    training = record.executors[0]
    (loader,) = record.data_loaders
    arguments = loader.arguments
    assert arguments["options"] is training.options
    assert arguments["batch_size"] == 4  # the micro-batch
    assert loader.combinedBatchSize == 4 * DEVICE_ITERATIONS * REPLICAS * ACCUMULATION
    assert isinstance(arguments["dataset"], batching.CombinedBatchRows)
    assert (arguments["shuffle"], arguments["num_workers"], arguments["auto_distributed_partitioning"]) == (False, 0, False)
    assert arguments["mode"].name == "Async"
    assert loader.terminated


def test_model_receives_the_host_steps_batches(finished_run):
    config, _, record, _ = finished_run
    training = record.executors[0]
    expected, _ = _expected_calls(config, STEPS // DEVICE_ITERATIONS)
    assert len(training.call_inputs) == len(expected)
    for call, (received, batch) in enumerate(zip(training.call_inputs, expected)):
        assert received.keys() == batch.keys(), call
        for key, value in batch.items():
            assert received[key].dtype == value.dtype, (call, key)
            assert torch.equal(received[key], value), (call, key)
    assert all(torch.equal(training.compiled_with[key], value) for key, value in expected[0].items())
    # The DataLoader had read further calls ahead, yet each checkpoint contains the position after its step.
    assert record.batches_read_ahead > 0
    _, stream = _expected_calls(config, 1)
    assert ckpt.load_training_state(finished_run[3] / "step_2")["data"] == stream.state_dict()


def test_rows_resume_after_k_calls(tmp_path, poptorch_double):
    import poptorch

    config = _config(tmp_path / "run")
    options = build_training_options(config, PopRunContext(local_replicas=REPLICAS), poptorch)
    initial = _windows(config).state_dict()

    def calls(states, count):
        loaders = batching.ReplicaLoaders(config=config, data_dir=None, replicas=(0, 1), total_replicas=REPLICAS,
                                          states=tuple(states))
        dataset = batching.CombinedBatchRows(loaders, device_iterations=DEVICE_ITERATIONS)
        iterator = iter(poptorch.DataLoader(options, dataset, batch_size=4))
        return [batching.with_loss_weights(next(iterator), lambda counts: counts, device_iterations=DEVICE_ITERATIONS,
                                           accumulation=ACCUMULATION, total_replicas=REPLICAS) for _ in range(count)]

    uninterrupted = calls(initial, 5)
    expected, _ = _expected_calls(config, 5)
    for got, want in zip(uninterrupted, expected):
        assert all(torch.equal(got[key], want[key]) for key in want)
    k = 3
    position = [batching.advance_loader_state(state, k * DEVICE_ITERATIONS * ACCUMULATION) for state in initial]
    for got, want in zip(calls(position, 2), uninterrupted[k:]):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[key], want[key]) for key in want)


def test_advance_loader_state_crosses_epochs():
    from pipelines.generated import create_generated_dataloader

    loader = create_generated_dataloader(micro_batch_size=2, sequence_length=16, mask_tokens=2, vocab_size=256,
                                         batches_per_epoch=3, repeat=True)
    initial = loader.state_dict()
    iterator = iter(loader)
    for batches in range(1, 8):
        next(iterator)
        assert batching.advance_loader_state(initial, batches) == loader.state_dict(), batches
    assert loader.state_dict()["epoch"] == 2
    with pytest.raises(ValueError, match="advance"):
        batching.advance_loader_state(initial, -1)


def test_loss_weights_reject_mixed_steps(tmp_path, poptorch_double):
    import poptorch

    config = _config(tmp_path / "run")
    options = build_training_options(config, PopRunContext(local_replicas=REPLICAS), poptorch)
    loaders = batching.ReplicaLoaders(config=config, data_dir=None, replicas=(0, 1), total_replicas=REPLICAS,
                                      states=tuple(_windows(config).state_dict()))
    batch = next(iter(poptorch.DataLoader(options, batching.CombinedBatchRows(loaders, device_iterations=2),
                                          batch_size=4)))
    # Generated rows all have the same counts. So the first row gets another count, as a row
    # that several loader workers interleaved from another step would.
    mixed = dict(batch, mlm_step_count=batch["mlm_step_count"].clone())
    mixed["mlm_step_count"][0] += 1
    batching.with_loss_weights(batch, lambda c: c, device_iterations=2, accumulation=ACCUMULATION,
                               total_replicas=REPLICAS)
    with pytest.raises(ValueError, match="mixed rows of different steps"):
        batching.with_loss_weights(mixed, lambda c: c, device_iterations=2, accumulation=ACCUMULATION,
                                   total_replicas=REPLICAS)
    with pytest.raises(ValueError, match="must come from CombinedBatchRows"):
        batching.with_loss_weights({"input_ids": batch["input_ids"]}, lambda c: c, device_iterations=2,
                                   accumulation=ACCUMULATION, total_replicas=REPLICAS)
