"""SQuAD reading, tokenizer loading, windowing and answer mapping, on real SQuAD data and vocabularies."""

import copy
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

from pipelines.squad import (
    SquadExample,
    SquadFeatureDataset,
    convert_examples_to_features,
    load_features,
    load_tokenizer,
    main,
    max_context_windows,
    plan_windows,
    read_squad_examples,
    save_features,
    vocab_is_uncased,
)


@pytest.fixture(scope="module")
def bert_tokenizer(bert_vocab_file):
    return load_tokenizer(bert_vocab_file)


@pytest.fixture(scope="module")
def eval_split(shared_data):
    return shared_data / "squad" / "squad-v1.1-dev-eval-split.json"


@pytest.fixture(scope="module")
def v2_sample(shared_data):
    return shared_data / "squad" / "dev-v2.0-sample.json"


@pytest.fixture(scope="module")
def first_paragraph(eval_split):
    """The first paragraph of the evaluation split (IPCC article), as raw JSON."""
    data = json.loads(eval_split.read_text(encoding="utf-8"))
    return data["data"][0]["paragraphs"][0]


def write_squad(tmp_path, paragraphs, version="1.1"):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")
    return path


def single_token_words(tokenizer, text):
    """Words of `text` that the tokenizer keeps as exactly one token, in order."""
    words = []
    for word in text.split():
        if word.isalpha() and len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
    return words


def text_of_tokens(tokenizer, words, count):
    """Join single-token words, cycling, into a text of exactly `count` tokens."""
    text = " ".join(words[i % len(words)] for i in range(count))
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count
    return text


def context_tokens(tokenizer, context):
    return len(tokenizer(context, add_special_tokens=False)["input_ids"])


# --- windows -------------------------------------------------------------------------------


def test_plan_windows_stride_above_room():
    assert plan_windows(157, room=114, doc_stride=128) == [(0, 114), (114, 43)]


def test_plan_windows_overlapping():
    assert plan_windows(300, room=114, doc_stride=64) == [(0, 114), (64, 114), (128, 114), (192, 108)]


def test_plan_windows_short_context():
    assert plan_windows(5, room=114, doc_stride=128) == [(0, 5)]


def test_plan_windows_rejects_no_room():
    with pytest.raises(ValueError, match="no room for context"):
        plan_windows(10, room=0, doc_stride=128)


def test_max_context_prefers_centre():
    windows = plan_windows(300, room=114, doc_stride=64)
    best = max_context_windows(windows, 300)
    assert best[0] == 0
    assert best[299] == 3
    # Window 0 holds tokens 0-113 and window 1 tokens 64-177: token 88 has 25 tokens on its
    # shorter side in window 0 and 24 in window 1; token 89 has 24 and 25.
    assert best[88] == 0
    assert best[89] == 1


def test_max_context_tie_prefers_longer_window():
    # Token 7 has 2 tokens on its shorter side in both windows; the longer window wins.
    best = max_context_windows([(0, 10), (5, 11)], 16)
    assert best[7] == 1
    assert best[5] == 0


def test_window_coverage_stride_above_room(bert_tokenizer, first_paragraph, caplog):
    words = single_token_words(bert_tokenizer, first_paragraph["context"])
    question = text_of_tokens(bert_tokenizer, words, 11)
    context = text_of_tokens(bert_tokenizer, words[3:], 157)
    example = SquadExample(qas_id="q", question=question, context=context, answers=[])

    with caplog.at_level(logging.WARNING):
        features, report = convert_examples_to_features(
            [example], bert_tokenizer, max_seq_length=128, doc_stride=128, max_query_length=64, is_training=False
        )

    assert [feature.context_token_start for feature in features] == [0, 114]
    context_counts = [int((feature.offset_mapping[:, 0] >= 0).sum()) for feature in features]
    assert context_counts == [114, 43]
    all_offsets = bert_tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = [tuple(span) for feature in features for span in feature.offset_mapping[feature.offset_mapping[:, 0] >= 0]]
    assert covered == [tuple(span) for span in all_offsets]
    assert report.notes["doc_stride_capped"] == 1
    assert "doc_stride was larger than the room" in caplog.text


def test_window_layout_special_tokens(bert_tokenizer, first_paragraph):
    example = SquadExample(qas_id="q", question="Who?", context=first_paragraph["context"], answers=[])
    features, _ = convert_examples_to_features(
        [example], bert_tokenizer, max_seq_length=128, doc_stride=64, max_query_length=64, is_training=False
    )
    feature = features[0]
    question_ids = bert_tokenizer("Who?", add_special_tokens=False)["input_ids"]
    assert feature.input_ids[0] == bert_tokenizer.cls_token_id
    assert list(feature.input_ids[1 : 1 + len(question_ids)]) == question_ids
    assert feature.input_ids[1 + len(question_ids)] == bert_tokenizer.sep_token_id
    assert feature.input_ids[-1] == bert_tokenizer.sep_token_id  # a full window has no padding
    assert feature.token_type_ids.tolist() == [0] * (len(question_ids) + 2) + [1] * (128 - len(question_ids) - 2)
    assert feature.attention_mask.tolist() == [1] * 128
    last = features[-1]
    padding = last.attention_mask == 0
    assert padding.any()
    assert (last.input_ids[padding] == bert_tokenizer.pad_token_id).all()
    assert (last.token_type_ids[padding] == 0).all()
    assert (last.offset_mapping[padding] == -1).all()


def test_max_context_flag_once_per_token(bert_tokenizer, first_paragraph):
    example = SquadExample(qas_id="q", question="Who?", context=first_paragraph["context"], answers=[])
    features, _ = convert_examples_to_features(
        [example], bert_tokenizer, max_seq_length=128, doc_stride=32, max_query_length=64, is_training=False
    )
    num_tokens = context_tokens(bert_tokenizer, first_paragraph["context"])
    assert len(features) > 3
    flags_per_token = np.zeros(num_tokens, dtype=int)
    for feature in features:
        in_context = np.nonzero(feature.offset_mapping[:, 0] >= 0)[0]
        assert (np.diff(in_context) == 1).all()
        token_numbers = feature.context_token_start + np.arange(len(in_context))
        flags_per_token[token_numbers] += feature.token_is_max_context[in_context]
        assert not feature.token_is_max_context[feature.offset_mapping[:, 0] < 0].any()
    assert (flags_per_token == 1).all()
    assert [feature.context_token_start for feature in features][:3] == [0, 32, 64]


# --- questions -----------------------------------------------------------------------------


def test_long_question_truncated(bert_tokenizer, first_paragraph, caplog):
    words = single_token_words(bert_tokenizer, first_paragraph["context"])
    question = text_of_tokens(bert_tokenizer, words, 400)
    qa = {"id": "long", "question": question, "answers": [{"text": "the United Nations", "answer_start": 114}]}
    path_examples, _ = read_squad_examples(
        [{"id": "long", "context": first_paragraph["context"], "question": question, "answers": {"text": ["the United Nations"], "answer_start": [114]}}],
        is_training=True,
        version_2_with_negative=False,
    )
    assert path_examples[0].question == qa["question"]

    with caplog.at_level(logging.WARNING):
        features, report = convert_examples_to_features(
            path_examples, bert_tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64, is_training=True
        )
    question_ids = bert_tokenizer(question, add_special_tokens=False)["input_ids"]
    assert report.notes["question_truncated"] == 1
    assert report.kept == 1
    assert "truncated" in caplog.text
    feature = features[0]
    assert list(feature.input_ids[1:65]) == question_ids[:64]
    assert feature.input_ids[65] == bert_tokenizer.sep_token_id
    answer = bert_tokenizer.decode(feature.input_ids[feature.start_position : feature.end_position + 1])
    assert answer == "the united nations"


def test_query_length_leaving_no_room(bert_tokenizer):
    example = SquadExample(qas_id="q", question="Who?", context="Nobody.", answers=[])
    with pytest.raises(ValueError, match="max_seq_length 64 leaves no room"):
        convert_examples_to_features([example], bert_tokenizer, max_seq_length=64, doc_stride=128, max_query_length=64, is_training=False)


# --- invalid examples ----------------------------------------------------------------------


def test_empty_context_skipped(tmp_path, first_paragraph, caplog):
    valid = copy.deepcopy(first_paragraph)
    valid["qas"] = valid["qas"][:1]
    empty = {"context": "", "qas": [{"id": "e1", "question": "Why?", "answers": [{"text": "x", "answer_start": 0}]}]}
    blank = {"context": "  \n ", "qas": [{"id": "e2", "question": "Why?", "answers": []}]}
    path = write_squad(tmp_path, [valid, empty, blank])

    with caplog.at_level(logging.WARNING):
        examples, report = read_squad_examples(path, is_training=True, version_2_with_negative=False)

    assert [example.qas_id for example in examples] == [valid["qas"][0]["id"]]
    assert report.skipped["empty_context"] == 2
    assert report.total == 3
    assert report.kept == 1
    assert report.example_ids["empty_context"] == ["e1", "e2"]
    assert "skipped 2: the context is empty" in caplog.text


def test_empty_context_skipped_in_prediction(tmp_path):
    path = write_squad(tmp_path, [{"context": "", "qas": [{"id": "e1", "question": "Why?", "answers": []}]}])
    examples, report = read_squad_examples(path, is_training=False, version_2_with_negative=False)
    assert examples == []
    assert report.skipped["empty_context"] == 1


def test_answer_start_past_context_end(tmp_path, first_paragraph):
    context = first_paragraph["context"]
    ipcc = context.index("IPCC")
    paragraph = {
        "context": context,
        "qas": [
            {"id": "past", "question": "What?", "answers": [{"text": "IPCC", "answer_start": len(context) + 5}]},
            {"id": "negative", "question": "What?", "answers": [{"text": "IPCC", "answer_start": -1}]},
            {"id": "good", "question": "What?", "answers": [{"text": "IPCC", "answer_start": ipcc}]},
        ],
    }
    path = write_squad(tmp_path, [paragraph])

    examples, report = read_squad_examples(path, is_training=True, version_2_with_negative=False)
    assert [example.qas_id for example in examples] == ["good"]
    assert report.skipped["answer_start_outside_context"] == 2
    assert report.example_ids["answer_start_outside_context"] == ["past", "negative"]

    # Prediction does not use the offsets: the questions stay, and the bad offsets are noted.
    examples, report = read_squad_examples(path, is_training=False, version_2_with_negative=False)
    assert [example.qas_id for example in examples] == ["past", "negative", "good"]
    assert report.notes["invalid_reference_answer"] == 2
    assert examples[0].answer_start_char is None


def test_answer_text_not_at_offset(tmp_path, first_paragraph):
    paragraph = {
        "context": first_paragraph["context"],
        "qas": [{"id": "shifted", "question": "What?", "answers": [{"text": "the United Nations", "answer_start": 115}]}],
    }
    examples, report = read_squad_examples(write_squad(tmp_path, [paragraph]), is_training=True, version_2_with_negative=False)
    assert examples == []
    assert report.skipped["answer_text_not_at_offset"] == 1


def test_other_invalid_questions(tmp_path, first_paragraph):
    context = first_paragraph["context"]
    ipcc = context.index("IPCC")
    paragraph = {
        "context": context,
        "qas": [
            {"id": "a", "question": "What?", "answers": [{"text": "IPCC", "answer_start": ipcc}]},
            {"id": "a", "question": "Again?", "answers": [{"text": "IPCC", "answer_start": ipcc}]},
            {"id": "", "question": "No id?", "answers": [{"text": "IPCC", "answer_start": ipcc}]},
            {"id": "blank", "question": "   ", "answers": [{"text": "IPCC", "answer_start": ipcc}]},
            {"id": "none", "question": "No answer?", "answers": []},
            {"id": "space", "question": "Space?", "answers": [{"text": " ", "answer_start": 3}]},
        ],
    }
    examples, report = read_squad_examples(write_squad(tmp_path, [paragraph]), is_training=True, version_2_with_negative=False)
    assert [example.qas_id for example in examples] == ["a"]
    assert dict(report.skipped) == {
        "duplicate_id": 1,
        "missing_id": 1,
        "empty_question": 1,
        "missing_answer": 1,
        "empty_answer": 1,
    }


def test_is_impossible_as_string(first_paragraph):
    context = first_paragraph["context"]
    start = context.index("IPCC")
    records = [
        {"id": "yes", "context": context, "question": "What?", "answers": {"text": ["IPCC"], "answer_start": [start]}, "is_impossible": "false"},
        {"id": "no", "context": context, "question": "Who?", "answers": {"text": [], "answer_start": []}, "is_impossible": "True"},
    ]
    examples, report = read_squad_examples(records, is_training=True, version_2_with_negative=True)
    assert report.kept == 2
    assert [example.is_impossible for example in examples] == [False, True]
    assert examples[0].answer_text == "IPCC"


def test_not_a_squad_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps([{"question": "x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="not a SQuAD file"):
        read_squad_examples(path, is_training=True, version_2_with_negative=False)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_squad_examples(path, is_training=True, version_2_with_negative=False)
    path.write_text(json.dumps({"data": [{"title": "x"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\[0\] has no 'paragraphs'"):
        read_squad_examples(path, is_training=True, version_2_with_negative=False)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_squad_examples(tmp_path / "absent.json", is_training=True, version_2_with_negative=False)


def test_v2_data_needs_v2_flag(v2_sample):
    with pytest.raises(ValueError, match="version_2_with_negative: true"):
        read_squad_examples(v2_sample, is_training=True, version_2_with_negative=False)


def test_dataset_name_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="needs the `datasets` package"):
        read_squad_examples("squad_v2", is_training=False, version_2_with_negative=True)


def test_hub_records_match_json(v2_sample):
    """Flat records in the Hugging Face `squad_v2` layout give the same examples as the JSON file."""
    data = json.loads(v2_sample.read_text(encoding="utf-8"))
    records = [
        {
            "id": qa["id"],
            "title": article["title"],
            "context": paragraph["context"],
            "question": qa["question"],
            "answers": {
                "text": [answer["text"] for answer in qa["answers"]],
                "answer_start": [answer["answer_start"] for answer in qa["answers"]],
            },
        }
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    from_json, _ = read_squad_examples(v2_sample, is_training=True, version_2_with_negative=True)
    from_records, report = read_squad_examples(records, is_training=True, version_2_with_negative=True)
    assert report.kept == 14
    assert from_records == from_json
    assert sum(example.is_impossible for example in from_records) == 6


# --- answers -------------------------------------------------------------------------------


def test_trailing_space_answer_same_tokens(bert_tokenizer, first_paragraph):
    context = first_paragraph["context"]
    start = context.index("the United Nations")
    assert context[start + len("the United Nations")] == ","
    start = context.index("United Nations ")
    records = [
        {"id": "plain", "context": context, "question": "Who?", "answers": {"text": ["United Nations"], "answer_start": [start]}},
        {"id": "trailing", "context": context, "question": "Who?", "answers": {"text": ["United Nations "], "answer_start": [start]}},
        {"id": "leading", "context": context, "question": "Who?", "answers": {"text": [" United Nations"], "answer_start": [start - 1]}},
    ]
    examples, report = read_squad_examples(records, is_training=True, version_2_with_negative=False)
    assert report.kept == 3
    assert {example.answer_text for example in examples} == {"United Nations"}

    features, _ = convert_examples_to_features(
        examples, bert_tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64, is_training=True
    )
    positions = {(feature.start_position, feature.end_position) for feature in features}
    assert len(positions) == 1
    start_position, end_position = positions.pop()
    assert start_position > 0
    assert bert_tokenizer.decode(features[0].input_ids[start_position : end_position + 1]) == "united nations"


def test_answer_outside_window_maps_to_cls(bert_tokenizer, first_paragraph):
    context = first_paragraph["context"]
    start = context.rindex("IPCC")
    records = [{"id": "late", "context": context, "question": "What?", "answers": {"text": ["IPCC"], "answer_start": [start]}}]
    examples, _ = read_squad_examples(records, is_training=True, version_2_with_negative=False)
    features, _ = convert_examples_to_features(
        examples, bert_tokenizer, max_seq_length=128, doc_stride=64, max_query_length=64, is_training=True
    )
    inside = [feature for feature in features if feature.start_position > 0]
    outside = [feature for feature in features if feature.start_position == 0]
    assert inside and outside
    assert all(feature.end_position == 0 and feature.is_impossible for feature in outside)
    for feature in inside:
        span = feature.input_ids[feature.start_position : feature.end_position + 1]
        assert bert_tokenizer.decode(span) == "ipcc"
        assert feature.char_span(feature.start_position)[0] == start


def test_unanswerable_trains_towards_cls(bert_tokenizer, v2_sample):
    examples, _ = read_squad_examples(v2_sample, is_training=True, version_2_with_negative=True)
    features, _ = convert_examples_to_features(
        examples, bert_tokenizer, max_seq_length=384, doc_stride=128, max_query_length=64, is_training=True
    )
    for feature in features:
        example = examples[feature.example_index]
        if example.is_impossible:
            assert (feature.start_position, feature.end_position) == (0, 0)
        else:
            assert 0 < feature.start_position <= feature.end_position


def test_answer_without_tokens_skipped(bert_tokenizer):
    # U+200B (zero width space) is dropped by the BERT normaliser, so no token covers it.
    context = "Alpha \u200b beta."
    records = [{"id": "zw", "context": context, "question": "What?", "answers": {"text": ["\u200b"], "answer_start": [6]}}]
    examples, report = read_squad_examples(records, is_training=True, version_2_with_negative=False)
    assert report.kept == 1
    features, feature_report = convert_examples_to_features(
        examples, bert_tokenizer, max_seq_length=64, doc_stride=32, max_query_length=16, is_training=True
    )
    assert features == []
    assert feature_report.skipped["answer_has_no_tokens"] == 1


# --- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_from_uncased_vocab(bert_vocab_file):
    tokenizer = load_tokenizer(bert_vocab_file)
    assert tokenizer.is_fast
    assert tokenizer.tokenize("Héllo World") == ["hello", "world"]
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (101, 102, 0)


def test_tokenizer_from_cased_vocab(tmp_path, bert_vocab_file):
    tokens = bert_vocab_file.read_text(encoding="utf-8").splitlines()
    tokens[1000:1002] = ["Hello", "World"]
    cased = tmp_path / "vocab.txt"
    cased.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    assert not vocab_is_uncased(tokens)
    tokenizer = load_tokenizer(cased)
    assert tokenizer.tokenize("Hello World") == ["Hello", "World"]


def test_tokenizer_from_json_and_folders(tmp_path, minilm_dir, bert_vocab_file):
    reference = load_tokenizer(bert_vocab_file)
    text = "The Intergovernmental Panel on Climate Change (IPCC), 1988."
    expected = reference(text)["input_ids"]

    from_dir = load_tokenizer(minilm_dir)
    from_json = load_tokenizer(minilm_dir / "tokenizer.json")
    vocab_only = tmp_path / "vocab_only"
    vocab_only.mkdir()
    shutil.copy(bert_vocab_file, vocab_only / "vocab.txt")
    from_vocab_dir = load_tokenizer(vocab_only)

    for tokenizer in (from_dir, from_json, from_vocab_dir):
        assert tokenizer.is_fast
        assert tokenizer(text)["input_ids"] == expected


def test_tokenizer_from_checkpoint_folder(tmp_path, minilm_dir):
    """A checkpoint folder with only config.json and tokenizer.json still gets BERT's special tokens."""
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    tokenizer = load_tokenizer(tmp_path)
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (101, 102, 0)
    assert tokenizer.tokenize("Hello") == ["hello"]


def test_tokenizer_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(ValueError, match="repeats line 1"):
        load_tokenizer(bad)
    bad.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the special tokens"):
        load_tokenizer(bad)


# --- dataset, saving and the command line --------------------------------------------------


def test_feature_dataset_items(bert_tokenizer, v2_sample):
    examples, _ = read_squad_examples(v2_sample, is_training=True, version_2_with_negative=True)
    features, _ = convert_examples_to_features(
        examples, bert_tokenizer, max_seq_length=128, doc_stride=64, max_query_length=32, is_training=True
    )
    training = SquadFeatureDataset(features, is_training=True)
    batch = next(iter(torch.utils.data.DataLoader(training, batch_size=4)))
    assert sorted(batch) == ["attention_mask", "end_positions", "input_ids", "start_positions", "token_type_ids"]
    assert all(tensor.dtype == torch.int64 for tensor in batch.values())
    assert batch["input_ids"].shape == (4, 128)
    assert batch["start_positions"].shape == (4,)

    prediction = SquadFeatureDataset(features, is_training=False)
    assert len(prediction) == len(features)
    item = prediction[len(features) - 1]
    assert sorted(item) == ["attention_mask", "feature_index", "input_ids", "token_type_ids"]
    assert item["feature_index"].dtype == torch.int64
    assert int(item["feature_index"]) == len(features) - 1

    with pytest.raises(ValueError, match="every example was skipped"):
        SquadFeatureDataset([], is_training=True)


def test_features_save_and_load(tmp_path, bert_tokenizer, v2_sample):
    examples, _ = read_squad_examples(v2_sample, is_training=False, version_2_with_negative=True)
    features, _ = convert_examples_to_features(
        examples, bert_tokenizer, max_seq_length=128, doc_stride=64, max_query_length=32, is_training=False
    )
    path = tmp_path / "features.npz"
    save_features(path, features)
    loaded = load_features(path)
    assert len(loaded) == len(features)
    for original, copy_ in zip(features, loaded):
        assert copy_.example_id == original.example_id
        assert (copy_.example_index, copy_.window_index, copy_.start_position) == (
            original.example_index,
            original.window_index,
            original.start_position,
        )
        assert np.array_equal(copy_.input_ids, original.input_ids)
        assert np.array_equal(copy_.offset_mapping, original.offset_mapping)
        assert np.array_equal(copy_.token_is_max_context, original.token_is_max_context)


def test_command_line_report(tmp_path, capsys, v2_sample, bert_vocab_file):
    output = tmp_path / "features.npz"
    result = main(
        [
            str(v2_sample),
            "--tokenizer",
            str(bert_vocab_file),
            "--version-2-with-negative",
            "--max-seq-length",
            "128",
            "--doc-stride",
            "128",
            "--output-file",
            str(output),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert printed["examples"] == 14
    assert printed["features"] == len(load_features(output))
    assert printed["features_report"]["notes"]["doc_stride_capped"] > 0
    assert printed["reading"]["skipped"] == {}


def test_command_line_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--doc-stride" in capsys.readouterr().out
