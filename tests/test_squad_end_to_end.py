"""SQuAD end to end on real data: JSON to features to logits to answers to scores."""

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from ipu_groupbert import squad_eval
from pipelines.squad import SquadFeatureDataset, convert_examples_to_features, load_tokenizer, read_squad_examples

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    return load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def v2_sample(shared_data):
    return shared_data / "squad" / "dev-v2.0-sample.json"


def oracle_logits(features, sequence_length):
    """Logits that put all weight on each feature's labelled start and end ([CLS] when absent)."""
    start = np.zeros((len(features), sequence_length))
    end = np.zeros((len(features), sequence_length))
    for index, feature in enumerate(features):
        start[index, feature.start_position] = 10.0
        end[index, feature.end_position] = 10.0
    return start, end


def comparable(text):
    """Lower-case, strip accents, and drop whitespace and invisible format characters.

    This mirrors what the uncased BERT tokenizer loses, so decoded tokens can be compared with the
    original answer text.
    """
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(character for character in text if unicodedata.category(character) not in ("Mn", "Cf", "Zs", "Cc"))


def test_v2_sample_oracle_scores_full_marks(tmp_path, minilm_tokenizer, v2_sample, capsys):
    examples, read_report = read_squad_examples(v2_sample, is_training=False, version_2_with_negative=True)
    assert read_report.kept == 14
    features, _ = convert_examples_to_features(
        examples, minilm_tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64, is_training=False
    )
    start, end = oracle_logits(features, 384)
    predictions = squad_eval.postprocess_predictions(
        examples, features, start, end, version_2_with_negative=True, output_dir=tmp_path
    )
    assert sum(answer == "" for answer in predictions.values()) == 6

    result = squad_eval.main(
        [
            "--data-file",
            str(v2_sample),
            "--prediction-file",
            str(tmp_path / "predictions.json"),
            "--null-odds-file",
            str(tmp_path / "null_odds.json"),
        ]
    )
    assert json.loads(capsys.readouterr().out) == result
    assert (result["exact_match"], result["f1"], result["total"]) == (100.0, 100.0, 14)
    assert (result["HasAns_total"], result["NoAns_total"]) == (8, 6)
    assert (result["best_exact"], result["best_f1"]) == (100.0, 100.0)


def test_v2_sample_with_real_model(tmp_path, minilm_dir, minilm_tokenizer, v2_sample):
    """Run the real MiniLM encoder with an untrained (seeded) QA head through post-processing."""
    from transformers import BertForQuestionAnswering

    examples, _ = read_squad_examples(v2_sample, is_training=False, version_2_with_negative=True)
    features, _ = convert_examples_to_features(
        examples, minilm_tokenizer, max_seq_length=256, doc_stride=128, max_query_length=64, is_training=False
    )
    torch.manual_seed(0)
    model = BertForQuestionAnswering.from_pretrained(str(minilm_dir)).eval()
    loader = torch.utils.data.DataLoader(SquadFeatureDataset(features, is_training=False), batch_size=8, shuffle=True)
    start_rows, end_rows, indices = [], [], []
    with torch.no_grad():
        for batch in loader:
            feature_index = batch.pop("feature_index")
            output = model(**batch)
            start_rows.append(output.start_logits)
            end_rows.append(output.end_logits)
            indices += feature_index.tolist()

    predictions = squad_eval.postprocess_predictions(
        examples,
        features,
        torch.cat(start_rows),
        torch.cat(end_rows),
        version_2_with_negative=True,
        output_dir=tmp_path,
        feature_indices=indices,
    )
    contexts = {example.qas_id: example.context for example in examples}
    assert set(predictions) == set(contexts)
    nbest = json.loads((tmp_path / "nbest_predictions.json").read_text())
    null_odds = json.loads((tmp_path / "null_odds.json").read_text())
    assert set(null_odds) == set(contexts)
    for qid, answer in predictions.items():
        assert answer in contexts[qid]
        assert 1 <= len(nbest[qid]) <= 20
        for entry in nbest[qid]:
            if entry["offsets"] is not None:
                begin, finish = entry["offsets"]
                assert contexts[qid][begin:finish] == entry["text"]
                assert len(minilm_tokenizer(entry["text"], add_special_tokens=False)["input_ids"]) <= 30

    result = squad_eval.evaluate_predictions(v2_sample, predictions, null_odds=null_odds)
    assert result["total"] == 14
    assert 0.0 <= result["f1"] <= 100.0
    assert result["best_exact"] >= result["NoAns_total"] / 14 * 100 - 1e-9  # answering all empty gets the NoAns share


@pytest.mark.parametrize(("max_seq_length", "doc_stride"), [(384, 128), (128, 64)])
def test_eval_split_answer_tokens(shared_data, minilm_tokenizer, max_seq_length, doc_stride):
    """Every training feature's answer tokens decode to the answer text when the window holds it.

    A few SQuAD answers start or end inside a word ('Japan' in 'Japanese'); their tokens cover
    the whole word, so the decoded text contains the answer instead of equalling it.
    """
    path = shared_data / "squad" / "squad-v1.1-dev-eval-split.json"
    examples, read_report = read_squad_examples(path, is_training=True, version_2_with_negative=False)
    features, feature_report = convert_examples_to_features(
        examples,
        minilm_tokenizer,
        max_seq_length=max_seq_length,
        doc_stride=doc_stride,
        max_query_length=64,
        is_training=True,
    )
    print(read_report.summary())
    print(feature_report.summary())
    assert read_report.kept == 1419
    assert feature_report.kept == 1419

    examples_with_answer = set()
    inside_words = []
    for feature in features:
        if feature.start_position == 0:
            assert feature.end_position == 0
            continue
        example = examples[feature.example_index]
        examples_with_answer.add(feature.example_index)
        decoded = minilm_tokenizer.decode(feature.input_ids[feature.start_position : feature.end_position + 1])
        aligned = (
            feature.char_span(feature.start_position)[0] == example.answer_start_char
            and feature.char_span(feature.end_position)[1] == example.answer_end_char
        )
        if aligned:
            assert comparable(decoded) == comparable(example.answer_text), example.qas_id
        else:
            inside_words.append(example.qas_id)
            assert comparable(example.answer_text) in comparable(decoded), example.qas_id
    print(f"{len(inside_words)} answers start or end inside a word: {inside_words}")
    # At these settings the windows overlap by more than this split's longest answer.
    assert len(examples_with_answer) == 1419
    assert len(inside_words) < 10


def test_eval_split_tiny_windows_cover_context(shared_data, minilm_tokenizer):
    """With doc_stride above the room for context, the windows still cover every context token."""
    path = shared_data / "squad" / "squad-v1.1-dev-eval-split.json"
    examples, _ = read_squad_examples(path, is_training=False, version_2_with_negative=False)
    features, report = convert_examples_to_features(
        examples, minilm_tokenizer, max_seq_length=96, doc_stride=128, max_query_length=64, is_training=False
    )
    assert report.notes["doc_stride_capped"] == 1419
    covered = {}
    for feature in features:
        context_positions = feature.offset_mapping[:, 0] >= 0
        covered[feature.example_index] = covered.get(feature.example_index, 0) + int(context_positions.sum())
    token_counts = minilm_tokenizer(list(dict.fromkeys(example.context for example in examples)), add_special_tokens=False)
    counts = dict(zip(dict.fromkeys(example.context for example in examples), map(len, token_counts["input_ids"])))
    for example_index, example in enumerate(examples):
        assert covered[example_index] == counts[example.context]


def test_module_command_lines(tmp_path, v2_sample, bert_vocab_file):
    """Both command lines run as `python -m` modules."""
    help_text = subprocess.run(
        [sys.executable, "-m", "pipelines.squad", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "--max-query-length" in help_text

    predictions = tmp_path / "predictions.json"
    data = json.loads(v2_sample.read_text())
    answers = {
        qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "")
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }
    predictions.write_text(json.dumps(answers))
    completed = subprocess.run(
        [sys.executable, "-m", "ipu_groupbert.squad_eval", "--data-file", str(v2_sample), "--prediction-file", str(predictions)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout)
    assert (result["exact_match"], result["f1"], result["NoAns_total"]) == (100.0, 100.0, 6)

    failed = subprocess.run(
        [sys.executable, "-m", "ipu_groupbert.squad_eval", "--data-file", str(v2_sample), "--prediction-file", str(tmp_path / "absent.json")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert "predictions file" in failed.stderr
    assert "not found" in failed.stderr
