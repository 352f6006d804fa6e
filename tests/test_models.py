"""Model tests: sizes, Hugging Face interop, padding and packing, FLOP counts, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForQuestionAnswering

import ipu_groupbert  # noqa: F401  (registers the Auto classes)
from ipu_groupbert.models import (
    GroupBertConfig,
    bert_config,
    build_model,
    count_parameters,
    groupbert_config,
    load_pretrained,
    pretraining_flops,
    set_attention_backend,
)
from ipu_groupbert.models.groupbert import GroupBertOutput

MODEL_TYPES = ["groupbert", "bert"]


def tiny_config(model_type: str, **overrides):
    keys = {"vocab_size": 1000, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, **overrides}
    return groupbert_config("tiny", **keys) if model_type == "groupbert" else bert_config("tiny", **keys)


def pretraining_batch(batch_size: int, sequence_length: int, vocab_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab_size, (batch_size, 4), generator=generator)
    labels[:, -1] = -100  # one padded mask slot per row
    return {
        "input_ids": torch.randint(5, vocab_size, (batch_size, sequence_length), generator=generator),
        "token_type_ids": torch.zeros(batch_size, sequence_length, dtype=torch.long),
        "attention_mask": torch.ones(batch_size, sequence_length, dtype=torch.long),
        "masked_lm_positions": torch.randint(1, sequence_length, (batch_size, 4), generator=generator),
        "masked_lm_labels": labels,
        "next_sentence_labels": torch.randint(0, 2, (batch_size, 1), generator=generator),
    }


def build_on_meta(config, task="pretraining"):
    with torch.device("meta"):
        return build_model(config, task)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [("base", 110_106_428), ("large", 336_226_108)])
def test_bert_parameter_count_matches_hugging_face(size, expected):
    config = bert_config(size)
    assert parameter_count(build_on_meta(config)) == expected
    assert count_parameters(config) == expected
    with torch.device("meta"):
        reference = transformers.BertForPreTraining(config)
    assert parameter_count(reference) == expected


@pytest.mark.parametrize("size, published", [("base", 160.8e6), ("large", 515.5e6)])
def test_groupbert_parameter_count_near_published(size, published):
    config = groupbert_config(size)
    built = parameter_count(build_on_meta(config))
    assert built == count_parameters(config)
    assert abs(built - published) / published < 0.005


@pytest.mark.parametrize("size", ["tiny", "mini", "medium"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_analytic_parameter_count_matches_model(model_type, size):
    config = groupbert_config(size) if model_type == "groupbert" else bert_config(size)
    assert parameter_count(build_on_meta(config)) == count_parameters(config)
    assert parameter_count(build_on_meta(config, "base")) == count_parameters(config, pretraining_heads=False)


def test_grouped_ffn_has_quarter_fewer_weights():
    config = groupbert_config("base")
    layer = build_on_meta(config, "base").encoder.layer[0]
    grouped = sum(
        p.numel()
        for module in (layer.intermediate_first, layer.output_first)
        for p in module.parameters()
        if p.dim() >= 2
    )
    dense = 2 * config.hidden_size * config.intermediate_size
    assert grouped == 6 * config.hidden_size**2
    assert dense == 8 * config.hidden_size**2
    assert grouped == 0.75 * dense


def test_grouped_projection_matches_grouped_conv():
    torch.manual_seed(0)
    module = GroupBertOutput(GroupBertConfig(hidden_size=64, num_attention_heads=1, conv_group_size=16, ffn_groups=4))
    intermediate = torch.randn(2, 5, 256)
    expected = module.dense_output_projection(
        module.grouped_matmul(intermediate.transpose(1, 2)).transpose(1, 2)
    )
    torch.testing.assert_close(module(intermediate), expected, atol=1e-5, rtol=1e-5)


def test_one_group_is_dense_projection():
    torch.manual_seed(0)
    module = GroupBertOutput(GroupBertConfig(hidden_size=64, num_attention_heads=1, conv_group_size=16, ffn_groups=1))
    intermediate = torch.randn(2, 5, 256)
    dense = F.linear(intermediate, module.grouped_matmul.weight.squeeze(-1), module.grouped_matmul.bias)
    torch.testing.assert_close(module(intermediate), module.dense_output_projection(dense), atol=1e-5, rtol=1e-5)


def test_layer_module_order_and_names():
    layer = build_on_meta(groupbert_config("tiny"), "base").encoder.layer[0]
    assert [name for name, _ in layer.named_children()] == [
        "convolution", "intermediate_first", "output_first", "attention",
        "intermediate_second", "output_second", "dropout",
    ]
    names = {name for name, _ in layer.named_parameters()}
    for expected in (
        "convolution.prenorm.weight", "convolution.glu.weight", "convolution.groupconv.weight",
        "convolution.conv_norm.weight", "convolution.output_projection.weight",
        "intermediate_first.LayerNorm.weight", "intermediate_first.dense.weight",
        "output_first.grouped_matmul.weight", "output_first.dense_output_projection.weight",
        "attention.LayerNorm.weight", "attention.self.query.weight", "attention.output.dense.weight",
    ):
        assert expected in names
    assert tuple(layer.convolution.groupconv.weight.shape) == (128, 16, 7)


def test_invalid_config_names_the_key():
    with pytest.raises(ValueError, match="hidden_size .* num_attention_heads"):
        GroupBertConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="intermediate_size .* ffn_groups"):
        GroupBertConfig(hidden_size=128, num_attention_heads=2, intermediate_size=510, ffn_groups=4)
    with pytest.raises(ValueError, match="conv_kernel_size"):
        GroupBertConfig(hidden_size=128, num_attention_heads=2, conv_kernel_size=6)


# ----- Hugging Face interop ---------------------------------------------------------------------


def test_minilm_checkpoint_matches_transformers(minilm_dir):
    tokenizer = transformers.BertTokenizerFast(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    sentences = [
        "GroupBERT adds grouped feed-forward layers and convolutions to BERT.",
        "The Normans gave their name to Normandy, a region in France.",
        "Short one.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    ours = load_pretrained(minilm_dir, "base").eval()
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        actual = ours(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (actual[real] - expected[real]).abs().max().item() < 1e-5
    # The padded positions differ by design (padding attends only to padding), so only real tokens count.
    assert real.sum() < real.numel()


def test_bert_state_dict_loads_into_transformers(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("bert")
    ours = build_model(config, "pretraining").eval()
    ours.save_pretrained(tmp_path)
    reference = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    batch = pretraining_batch(2, 12, config.vocab_size)
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"]).prediction_logits
        actual = ours(input_ids=batch["input_ids"]).mlm_logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_auto_classes_save_and_reload(tmp_path):
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "groupbert", vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64,
    )
    assert isinstance(config, GroupBertConfig)
    batch = pretraining_batch(2, 12, config.vocab_size)
    model = AutoModelForPreTraining.from_config(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert reloaded.cls.predictions.decoder.weight is reloaded.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).mlm_logits, model(**batch).mlm_logits, atol=0, rtol=0)
        encoder = AutoModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(
            encoder(batch["input_ids"]).last_hidden_state,
            model.bert(batch["input_ids"]).last_hidden_state,
            atol=0, rtol=0,
        )
    qa_model = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    assert type(qa_model).__name__ == "GroupBertForQuestionAnswering"
    assert torch.equal(qa_model.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


# ----- padding and packing -----------------------------------------------------------------------


def encode_alone(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids[None]).last_hidden_state[0]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_padded_equals_unpadded(model_type):
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type), "base").eval()
    lengths = [11, 3, 16]
    sequences = [torch.randint(5, 1000, (n,)) for n in lengths]
    input_ids = torch.zeros(len(lengths), 16, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
    with torch.no_grad():
        padded = model(input_ids, attention_mask=attention_mask).last_hidden_state
    for row, sequence in enumerate(sequences):
        alone = encode_alone(model, sequence)
        assert (padded[row, : len(sequence)] - alone).abs().max().item() < 1e-5


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("lengths", [[9, 6, 12], [2, 3, 1, 5]], ids=["longer-than-kernel", "shorter-than-kernel"])
def test_packed_equals_alone(model_type, lengths):
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type), "base").eval()
    row_length = sum(lengths) + 3  # three padding tokens at the end of the row
    sequences = [torch.randint(5, 1000, (n,)) for n in lengths]
    input_ids = torch.zeros(1, row_length, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)
    sequence_ids = torch.zeros_like(input_ids)
    start = 0
    for index, sequence in enumerate(sequences, start=1):
        input_ids[0, start : start + len(sequence)] = sequence
        position_ids[0, start : start + len(sequence)] = torch.arange(len(sequence))
        sequence_ids[0, start : start + len(sequence)] = index
        start += len(sequence)
    with torch.no_grad():
        packed = model(input_ids, position_ids=position_ids, sequence_ids=sequence_ids).last_hidden_state[0]
    start = 0
    for sequence in sequences:
        alone = encode_alone(model, sequence)
        assert (packed[start : start + len(sequence)] - alone).abs().max().item() < 1e-5
        start += len(sequence)


def test_packed_convolution_path_matches_conv1d():
    torch.manual_seed(0)
    convolution = build_model(tiny_config("groupbert"), "base").encoder.layer[0].convolution
    hidden_states = torch.randn(2, 10, 128)
    one_sequence = torch.ones(2, 10, dtype=torch.long)
    with torch.no_grad():
        reference = convolution(hidden_states, one_sequence, None)
        packed_path = convolution(hidden_states, one_sequence, one_sequence)
    torch.testing.assert_close(packed_path, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_matmul_attention_matches_sdpa(model_type):
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type), "pretraining").eval()
    batch = pretraining_batch(2, 16, 1000)
    batch["attention_mask"][1, 10:] = 0
    with torch.no_grad():
        sdpa = model(**batch).mlm_logits
        set_attention_backend(model, "matmul")
        matmul = model(**batch).mlm_logits
    torch.testing.assert_close(matmul, sdpa, atol=1e-5, rtol=1e-5)


# ----- training signals -------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pretraining_step_reaches_every_parameter(model_type):
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type), "pretraining").train()
    output = model(**pretraining_batch(2, 16, 1000))
    output.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_pretraining_loss_statistics():
    torch.manual_seed(0)
    model = build_model(tiny_config("groupbert"), "pretraining").eval()
    batch = pretraining_batch(3, 16, 1000)
    batch["next_sentence_labels"][2] = -100
    with torch.no_grad():
        output = model(**batch)
    assert output.mlm_logits.shape == (3, 4, 1000)
    assert output.nsp_logits.shape == (3, 1, 2)
    assert output.mlm_count.item() == 9  # 3 rows x 3 labelled slots
    assert output.nsp_count.item() == 2
    expected_mlm = F.cross_entropy(output.mlm_logits.reshape(-1, 1000), batch["masked_lm_labels"].reshape(-1))
    torch.testing.assert_close(output.mlm_loss, expected_mlm)
    torch.testing.assert_close(output.loss, output.mlm_loss + output.nsp_loss)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_question_answering_head(model_type):
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type), "question_answering")
    input_ids = torch.randint(5, 1000, (2, 16))
    output = model(input_ids, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    assert output.start_logits.shape == (2, 16)
    assert output.end_logits.shape == (2, 16)
    output.loss.backward()
    assert model.qa_outputs.weight.grad is not None


# ----- FLOP counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("size, sequence_length", [("tiny", 128), ("base", 128)])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_analytic_flops_match_flop_counter(model_type, size, sequence_length):
    torch.manual_seed(0)
    config = groupbert_config(size) if model_type == "groupbert" else bert_config(size)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    mask_tokens = 20
    model = build_model(config, "pretraining")
    batch = pretraining_batch(1, sequence_length, config.vocab_size)
    batch["masked_lm_positions"] = torch.arange(1, mask_tokens + 1)[None]
    batch["masked_lm_labels"] = torch.randint(0, config.vocab_size, (1, mask_tokens))

    counter = FlopCounterMode(display=False)
    # The math SDPA backend runs attention as matmuls, the form counted analytically
    # (fused kernels differ in what their backward recomputes).
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(**batch).loss.backward()
    counts = counter.get_flop_counts()["Global"]
    measured = counter.get_total_flops()
    if torch.ops.aten.convolution_backward in counts:
        # FlopCounterMode (torch 2.13) counts the input gradient of a grouped convolution as if the
        # convolution were ungrouped (H x H x K instead of H x 16 x K weights per position). Its
        # backward does the same work as its forward twice over, as for any matmul.
        measured += 2 * counts[torch.ops.aten.convolution] - counts[torch.ops.aten.convolution_backward]
    analytic = pretraining_flops(config, sequence_length, mask_tokens).training_per_row
    assert abs(analytic - measured) / measured < 0.02, (analytic, measured)
