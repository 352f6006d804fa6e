"""The IPU placement plan: a pure function of the model's shape and execution.layers_per_ipu.

These tests need neither PopTorch nor its test double.
"""

import pytest

from ipu_groupbert.config import ConfigError, load_config
from ipu_groupbert.execution.placement import (
    format_placement_table,
    layer_ipus,
    pipeline_stages,
    placement_plan,
    plan_placement,
)


def _ipu_of(plan):
    return {placement.module: placement.ipu for placement in plan}


def test_groupbert_base_four_ipus():
    config = load_config("groupbert_base", ["--layers-per-ipu", "[0,4,4,4]", "--ipus-per-replica", "4"])
    plan = placement_plan(config, "pretraining")
    ipu_of = _ipu_of(plan)

    assert ipu_of["bert.embeddings"] == 0
    assert ipu_of["cls.predictions"] == 0  # the MLM head contains the decoder tied to the word embeddings
    assert [ipu_of[f"bert.encoder.layer.{i}"] for i in range(0, 4)] == [1, 1, 1, 1]
    assert [ipu_of[f"bert.encoder.layer.{i}"] for i in range(4, 8)] == [2, 2, 2, 2]
    assert [ipu_of[f"bert.encoder.layer.{i}"] for i in range(8, 12)] == [3, 3, 3, 3]
    assert ipu_of["bert.encoder.LayerNorm"] == 3
    assert ipu_of["bert.pooler"] == 0
    assert ipu_of["cls.seq_relationship"] == 0


def test_plan_is_in_execution_order():
    plan = plan_placement("pretraining", "groupbert", 12, [0, 4, 4, 4], 4)
    modules = [placement.module for placement in plan]
    assert modules == (
        ["bert.embeddings"] + [f"bert.encoder.layer.{i}" for i in range(12)]
        + ["bert.encoder.LayerNorm", "cls.predictions", "bert.pooler", "cls.seq_relationship"]
    )


def test_one_block_per_visit_to_an_ipu():
    plan = plan_placement("pretraining", "groupbert", 12, [0, 4, 4, 4], 4)
    blocks = {placement.module: placement.block for placement in plan}
    assert pipeline_stages(plan) == 5
    assert blocks["bert.embeddings"] == "Stage0@IPU0"
    assert blocks["bert.encoder.layer.0"] == blocks["bert.encoder.layer.3"] == "Stage1@IPU1"
    assert blocks["bert.encoder.layer.11"] == blocks["bert.encoder.LayerNorm"] == "Stage3@IPU3"
    assert blocks["cls.predictions"] == blocks["cls.seq_relationship"] == "Stage4@IPU0"


def test_layers_on_ipu0_join_the_embedding_stage():
    plan = plan_placement("pretraining", "groupbert", 24, [2, 7, 7, 8], 4)
    blocks = {placement.module: placement.block for placement in plan}
    assert blocks["bert.encoder.layer.1"] == blocks["bert.embeddings"] == "Stage0@IPU0"
    assert blocks["bert.encoder.layer.2"] == "Stage1@IPU1"
    assert pipeline_stages(plan) == 5


def test_single_ipu_is_one_stage():
    plan = plan_placement("pretraining", "groupbert", 2, [2], 1)
    assert {placement.ipu for placement in plan} == {0}
    assert pipeline_stages(plan) == 1


def test_question_answering_head_on_last_ipu():
    plan = plan_placement("question_answering", "groupbert", 12, [0, 4, 4, 4], 4)
    ipu_of = _ipu_of(plan)
    assert ipu_of["qa_outputs"] == 3
    assert ipu_of["bert.embeddings"] == 0
    assert "cls.predictions" not in ipu_of
    assert "bert.pooler" not in ipu_of  # the question-answering model has no pooler
    assert pipeline_stages(plan) == 4


def test_bert_has_no_final_layer_norm():
    plan = plan_placement("pretraining", "bert", 12, [0, 4, 4, 4], 4)
    assert "bert.encoder.LayerNorm" not in _ipu_of(plan)


@pytest.mark.parametrize(
    ("layers_per_ipu", "num_layers", "ipus", "expected"),
    [
        ([0, -1, -1, -1], 12, 4, [0, 4, 4, 4]),
        ([1, -1, -1], 12, 3, [1, 5, 6]),  # the later wildcard takes the remainder: IPU 0 also has the embeddings
        ([-1, 3, -1, 3], 12, 4, [3, 3, 3, 3]),
        (3, 12, 4, [3, 3, 3, 3]),
        (-1, 12, 4, [3, 3, 3, 3]),
        (-1, 10, 4, [2, 2, 3, 3]),
        ([3, 7, 7, 7], 24, 4, [3, 7, 7, 7]),
    ],
)
def test_layers_per_ipu_expansion(layers_per_ipu, num_layers, ipus, expected):
    ipus_of_layers = layer_ipus(layers_per_ipu, num_layers, ipus)
    assert [ipus_of_layers.count(ipu) for ipu in range(ipus)] == expected


def test_wrong_sum_states_both_counts():
    with pytest.raises(ValueError, match=r"places 11 layers but num_hidden_layers is 12"):
        layer_ipus([0, 4, 4, 3], 12, 4)


def test_wrong_length_states_both_counts():
    with pytest.raises(ValueError, match=r"has 3 entries but ipus_per_replica is 4"):
        layer_ipus([4, 4, 4], 12, 4)


def test_fixed_entries_above_layer_count():
    with pytest.raises(ValueError, match=r"places 13 layers before the -1 entries, but num_hidden_layers is 12"):
        layer_ipus([13, -1], 12, 2)


def test_idle_ipu_is_rejected():
    with pytest.raises(ValueError, match=r"leaves IPU\(s\) \[1\] without an encoder layer"):
        layer_ipus([0, 0, 6, 6], 12, 4)


def test_wildcards_too_few_layers_rejected():
    with pytest.raises(ValueError, match=r"expands to \[0, 0, 1, 1\]"):
        layer_ipus([0, -1, -1, -1], 2, 4)


def test_unknown_task_rejected():
    with pytest.raises(ValueError, match="no IPU placement for task 'classification'"):
        plan_placement("classification", "groupbert", 12, [0, 4, 4, 4], 4)


def test_config_with_wrong_sum_names_counts():
    with pytest.raises(ConfigError, match=r"places 11 layers but num_hidden_layers is 12"):
        load_config("groupbert_base", ["--layers-per-ipu", "[0,4,4,3]"])


def test_table_lists_every_module():
    plan = plan_placement("pretraining", "groupbert", 12, [0, 4, 4, 4], 4)
    table = format_placement_table(plan)
    lines = table.splitlines()
    assert lines[0] == "IPU placement per replica: 4 IPU(s), 5 pipeline stage(s)"
    assert len(lines) == 2 + len(plan)
    row = next(line for line in lines if "bert.encoder.layer.5 " in line)
    assert row.split() == ["bert.encoder.layer.5", "2", "Stage2@IPU2"]
