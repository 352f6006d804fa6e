"""SQuAD fine-tuning through run_squad's main(): a real checkpoint learns, and bad settings fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipu_groupbert import checkpoint as ckpt
from ipu_groupbert.config import ConfigError, load_config
from ipu_groupbert.pretraining import main as pretrain
from ipu_groupbert.squad import main


def squad_subset(source: Path, destination: Path, questions: int) -> Path:
    """Write the first `questions` questions of a SQuAD file, in file order, as a SQuAD file."""
    data = json.loads(source.read_text(encoding="utf-8"))
    articles, kept = [], 0
    for article in data["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            take = paragraph["qas"][: questions - kept]
            if take:
                paragraphs.append({**paragraph, "qas": take})
                kept += len(take)
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
        if kept == questions:
            break
    destination.write_text(json.dumps({"version": data.get("version", "1.1"), "data": articles}), encoding="utf-8")
    return destination


def squad_run(run_dir: Path, checkpoint: Path, *overrides: str):
    return load_config("squad_tiny", [
        "--training.checkpoint_input_dir", str(checkpoint), "--training.checkpoint_output_dir", str(run_dir),
        "--logging.disable_progress_bar", "true", "--execution.device", "cpu", *overrides,
    ])


def test_minilm_learns_squad(shared_data, minilm_dir, tmp_path):
    """Fine-tune the real MiniLM BERT on 400 questions, score 100 held-out ones.

    An untrained QA head scores an F1 of about 5 here; two short epochs reach about 25.
    """
    squad = shared_data / "squad"
    train = squad_subset(squad / "squad-v1.1-dev-train-split.json", tmp_path / "train.json", 400)
    evaluation = squad_subset(squad / "squad-v1.1-dev-eval-split.json", tmp_path / "eval.json", 100)
    result = main(squad_run(
        tmp_path / "run", minilm_dir, "--squad.train_file", str(train), "--squad.predict_file", str(evaluation),
        "--data.sequence_length", "192", "--squad.doc_stride", "96", "--squad.epochs", "2",
        "--training.learning_rate", "4e-4",
    ))
    assert result.evaluation["total"] == 100
    assert result.evaluation["f1"] > 15.0, result.evaluation
    for name in ("predictions.json", "nbest_predictions.json", "eval_results.json"):
        assert (tmp_path / "run" / name).is_file(), name
    predictions = json.loads((tmp_path / "run" / "predictions.json").read_text())
    contexts = {
        qa["id"]: paragraph["context"]
        for article in json.loads(evaluation.read_text())["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }
    assert all(text in contexts[qid] for qid, text in predictions.items())
    assert (result.checkpoint / "tokenizer" / "tokenizer.json").is_file()


def test_squad_v2_sample_from_our_checkpoint(shared_data, tmp_path):
    """A GroupBERT pre-training checkpoint fine-tunes and predicts on SQuAD v2.0 end to end."""
    pretrain(load_config("groupbert_tiny", [
        "--model.vocab_size", "1024", "--model.max_position_embeddings", "128",
        "--data.sequence_length", "128", "--data.dataloader_workers", "0", "--data.validation_fraction", "0.05",
        "--data.prepared_data_dir", str(tmp_path / "data"), "--training.training_steps", "2",
        "--training.validation_batches", "0", "--training.checkpoint_output_dir", str(tmp_path / "pretrain"),
        "--logging.disable_progress_bar", "true", "--execution.device", "cpu",
    ]))
    sample = shared_data / "squad" / "dev-v2.0-sample.json"
    result = main(squad_run(
        tmp_path / "squad", tmp_path / "pretrain", "--squad.train_file", str(sample),
        "--squad.predict_file", str(sample), "--squad.version_2_with_negative", "true",
        "--data.sequence_length", "128", "--squad.doc_stride", "64", "--training.micro_batch_size", "4",
    ))
    for key in ("HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"):
        assert key in result.evaluation
    assert (tmp_path / "squad" / "null_odds.json").is_file()


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist; check training.checkpoint_input_dir"):
        main(squad_run(tmp_path / "run", tmp_path / "nowhere"))


def test_checkpoint_without_tokenizer_is_reported(tmp_path):
    from ipu_groupbert.models import bert_config, build_model

    build_model(bert_config("tiny", vocab_size=100), "base").save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match="has no tokenizer.*squad.tokenizer"):
        main(squad_run(tmp_path / "run", tmp_path / "model"))
