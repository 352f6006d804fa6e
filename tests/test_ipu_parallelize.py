"""parallelize/deparallelize on CPU, against the PopTorch test double.

These tests verify the mapping onto PopTorch (which module gets which BeginBlock, checkpoints,
serialized matmuls) and that an annotated model still computes the plain model's outputs. They
do not test execution on IPUs.
"""

import pytest
import torch
from torch import nn

from ipu_groupbert.config import load_config
from ipu_groupbert.execution.parallelize import (
    SerializedEmbedding,
    deparallelize,
    is_parallelized,
    parallelize,
)
from ipu_groupbert.execution.placement import placement_plan
from ipu_groupbert.models import build_model, model_config_from_dict, set_attention_backend
from ipu_groupbert.models.layers import SelfAttention
from poptorch_double import poptorch_double  # noqa: F401  (fixture)

# groupbert_base's layout (12 layers on [0, 4, 4, 4]) at a width that runs in milliseconds.
SMALL_BASE = [
    "--hidden-size", "64", "--num-attention-heads", "2", "--intermediate-size", "256", "--vocab-size", "1024",
    "--layers-per-ipu", "[0,4,4,4]", "--ipus-per-replica", "4", "--embedding-serialization-factor", "2",
    "--recompute-checkpoint-every-layer", "true",
]


def _config(name="groupbert_base", extra=()):
    return load_config(name, SMALL_BASE + list(extra))


def _model(config, task="pretraining", seed=0):
    torch.manual_seed(seed)
    model_config = model_config_from_dict({"model_type": config.model.model_type, **config.model_config_dict()})
    return build_model(model_config, task).eval()


def _batch(vocab_size=1024, batch_size=2, sequence_length=32, mask_slots=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch_size, sequence_length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 24:] = 0
    labels = torch.randint(5, vocab_size, (batch_size, mask_slots), generator=generator)
    labels[1, -1] = -100
    return {
        "input_ids": input_ids,
        "token_type_ids": (torch.arange(sequence_length) >= 16).long().expand(batch_size, -1).clone(),
        "attention_mask": attention_mask,
        "position_ids": torch.arange(sequence_length).expand(batch_size, -1).clone(),
        "masked_lm_positions": torch.randint(1, 24, (batch_size, mask_slots), generator=generator),
        "masked_lm_labels": labels,
        "next_sentence_positions": torch.zeros(batch_size, 1, dtype=torch.long),
        "next_sentence_labels": torch.tensor([[0], [1]]),
    }


def test_blocks_follow_the_plan(poptorch_double):
    config = _config()
    model = _model(config)
    plan = parallelize(model, config, "pretraining")

    recorded = [(module, block, ipu) for module, block, ipu in poptorch_double.blocks]
    expected = [(model.get_submodule(p.module), p.block, p.ipu) for p in plan]
    assert len(recorded) == len(expected)
    for (module, block, ipu), (expected_module, expected_block, expected_ipu) in zip(recorded, expected):
        assert module is expected_module
        assert (block, ipu) == (expected_block, expected_ipu)
    assert plan == placement_plan(config, "pretraining")


def test_base_layout_on_four_ipus(poptorch_double):
    config = _config()
    model = _model(config)
    parallelize(model, config, "pretraining")
    ipu_of = {id(module): ipu for module, _, ipu in poptorch_double.blocks}

    assert ipu_of[id(model.bert.embeddings)] == 0
    assert ipu_of[id(model.cls.predictions)] == 0
    for index, layer in enumerate(model.bert.encoder.layer):
        assert ipu_of[id(layer)] == 1 + index // 4


def test_blocks_start_in_plan_order(poptorch_double):
    config = _config()
    model = _model(config)
    plan = parallelize(model, config, "pretraining")
    model(**_batch())
    assert poptorch_double.block_starts == [(p.block, p.ipu) for p in plan]


def test_annotated_model_matches_plain_model(poptorch_double):
    config = _config()
    batch = _batch()
    plain = _model(config)
    set_attention_backend(plain, "matmul")
    with torch.no_grad():
        expected = plain(**batch)
    default_attention = _model(config)
    with torch.no_grad():
        with_sdpa = default_attention(**batch)

    annotated = _model(config)
    parallelize(annotated, config, "pretraining")
    with torch.no_grad():
        output = annotated(**batch)

    # Inert annotations: bit for bit the plain model with the same (matmul) attention.
    assert torch.equal(output.mlm_logits, expected.mlm_logits)
    assert torch.equal(output.nsp_logits, expected.nsp_logits)
    assert torch.equal(output.loss, expected.loss)
    # Against the host default (SDPA attention) only rounding differs.
    torch.testing.assert_close(output.mlm_logits, with_sdpa.mlm_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.loss, with_sdpa.loss, rtol=1e-5, atol=1e-5)


def test_annotated_model_gradients_match(poptorch_double):
    config = _config()
    batch = _batch()
    plain = _model(config).train()
    set_attention_backend(plain, "matmul")
    plain(**batch).loss.backward()
    annotated = _model(config).train()
    parallelize(annotated, config, "pretraining")
    annotated(**batch).loss.backward()

    plain_grads = {name: p.grad for name, p in plain.named_parameters()}
    for name, parameter in annotated.named_parameters():
        torch.testing.assert_close(parameter.grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpoint_per_layer_and_serialized_decoder(poptorch_double):
    config = _config()
    model = _model(config)
    parallelize(model, config, "pretraining")
    model(**_batch())
    assert poptorch_double.recomputation_checkpoints == 12
    assert poptorch_double.serialized_matmuls == [("OutputChannels", 2)]
    assert isinstance(model.bert.embeddings.word_embeddings, SerializedEmbedding)
    assert all(not m.use_sdpa for m in model.modules() if isinstance(m, SelfAttention))


def test_no_checkpoints_or_serialization_when_off(poptorch_double):
    config = _config(extra=["--recompute-checkpoint-every-layer", "false", "--embedding-serialization-factor", "1"])
    model = _model(config)
    parallelize(model, config, "pretraining")
    model(**_batch())
    assert poptorch_double.recomputation_checkpoints == 0
    assert poptorch_double.serialized_matmuls == []
    assert type(model.bert.embeddings.word_embeddings) is nn.Embedding


def test_round_trip_keeps_state_dict(poptorch_double):
    config = _config()
    model = _model(config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    embedding_type = type(model.bert.embeddings.word_embeddings)
    decoder_type = type(model.cls.predictions.decoder)

    parallelize(model, config, "pretraining")
    during = model.state_dict()
    assert list(during) == list(before)
    deparallelize(model)
    after = model.state_dict()

    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert type(model.bert.embeddings.word_embeddings) is embedding_type
    assert type(model.cls.predictions.decoder) is decoder_type
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert not is_parallelized(model)


def test_round_trip_removes_every_hook(poptorch_double):
    config = _config()
    model = _model(config)
    parallelize(model, config, "pretraining")
    deparallelize(model)
    for name, module in model.named_modules():
        assert not module._forward_pre_hooks, name
        assert not module._forward_hooks, name
    assert all(m.use_sdpa for m in model.modules() if isinstance(m, SelfAttention))
    poptorch_double.recomputation_checkpoints = 0
    model(**_batch())
    assert poptorch_double.recomputation_checkpoints == 0


def test_tying_survives_parallelize(poptorch_double):
    config = _config()
    model = _model(config)
    parallelize(model, config, "pretraining")
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    model.half()  # the IPU path trains in fp16; the shared Parameter must stay shared
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    deparallelize(model)
    assert model.bert.embeddings.word_embeddings.weight.dtype == torch.float16


def test_question_answering_model(poptorch_double):
    config = _config()
    model = _model(config, task="question_answering")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    plan = parallelize(model, config, "question_answering")
    assert {p.module: p.ipu for p in plan}["qa_outputs"] == 3
    assert model.qa_outputs in [module for module, _, _ in poptorch_double.blocks]
    batch = {key: value for key, value in _batch().items() if key in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        output = model(**batch)
    assert output.start_logits.shape == (2, 32)
    deparallelize(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_bert_baseline(poptorch_double):
    config = _config("bert_base")
    model = _model(config)
    plan = parallelize(model, config, "pretraining")
    assert "bert.encoder.LayerNorm" not in {p.module for p in plan}
    model(**_batch())
    deparallelize(model)


def test_parallelize_twice_rejected(poptorch_double):
    config = _config()
    model = _model(config)
    parallelize(model, config, "pretraining")
    with pytest.raises(RuntimeError, match="already parallelized"):
        parallelize(model, config, "pretraining")


def test_deparallelize_plain_model_rejected(poptorch_double):
    model = _model(_config())
    with pytest.raises(RuntimeError, match="not parallelized"):
        deparallelize(model)


def test_failure_leaves_plain_model(poptorch_double):
    import poptorch

    config = _config()
    model = _model(config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    poptorch.BeginBlock(model.cls.predictions, "user block", ipu_id=0)  # a block the plan collides with
    with pytest.raises(RuntimeError, match="already been assigned to a block"):
        parallelize(model, config, "pretraining")

    assert not is_parallelized(model)
    assert type(model.bert.embeddings.word_embeddings) is nn.Embedding
    assert all(not module._forward_hooks for module in model.modules())
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_layer_count_from_model(poptorch_double):
    # A -1 layout adapts to the model it is applied to, as for a checkpoint of another size.
    config = _config(extra=["--layers-per-ipu", "[0,-1,-1,-1]"])
    model = _model(load_config("groupbert_base", SMALL_BASE + ["--num-hidden-layers", "6", "--layers-per-ipu", "-1"]))
    plan = parallelize(model, config, "pretraining")
    layers = [p.ipu for p in plan if p.module.startswith("bert.encoder.layer.")]
    assert layers == [1, 1, 2, 2, 3, 3]


def test_serialized_embedding_equals_lookup():
    torch.manual_seed(0)
    embedding = nn.Embedding(12, 4, padding_idx=0)
    serialized = SerializedEmbedding.wrapping(embedding, 3)
    ids = torch.tensor([[0, 3, 4, 7, 8, 11], [11, 10, 5, 0, 1, 2]])

    assert serialized.weight is embedding.weight
    assert torch.equal(serialized(ids), embedding(ids))
    serialized(ids).pow(2).sum().backward()
    serialized_grad = embedding.weight.grad.clone()
    embedding.weight.grad = None
    embedding(ids).pow(2).sum().backward()
    assert torch.equal(serialized_grad, embedding.weight.grad)
    assert torch.count_nonzero(serialized_grad[0]) == 0  # the padding row gets no gradient


def test_serialized_embedding_needs_divisor():
    with pytest.raises(ValueError, match="does not divide the vocabulary of 10 tokens"):
        SerializedEmbedding.wrapping(nn.Embedding(10, 4), 3)
