"""Run configuration: shipped configs, validation errors, overrides, extends chains, derived values."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from ipu_groupbert.config import (
    CONFIGS_DIR,
    KEY_SECTIONS,
    SECTION_CLASSES,
    ConfigError,
    RunConfig,
    expand_layers_per_ipu,
    format_help,
    key_spec,
    load_config,
    parse_args,
)

SHIPPED = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_file(tmp_path: Path) -> Path:
    """A small valid GroupBERT config outside configs/, for tests that break one key."""
    return write(tmp_path, "small.yaml", """\
        model:
          hidden_size: 128
          num_hidden_layers: 2
          num_attention_heads: 2
        training:
          micro_batch_size: 4
          training_steps: 20
        """)


def error_of(path: Path, text: str, overrides: list[str] | None = None) -> str:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Shipped configs


def test_configs_folder_has_expected_files():
    for name in ["groupbert_tiny", "groupbert_mini", "groupbert_medium", "groupbert_base", "groupbert_large",
                 "groupbert_base_phase2", "groupbert_large_phase2", "bert_tiny", "bert_mini", "bert_medium",
                 "bert_base", "bert_large", "bert_base_phase2", "bert_large_phase2", "squad_groupbert_base",
                 "squad_groupbert_large", "squad_bert_base", "squad_tiny"]:
        assert f"{name}.yaml" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads(name):
    config = load_config(name)
    derived = config.derived()
    assert sum(derived.layers_per_ipu) == config.model.num_hidden_layers
    assert len(derived.matmul_proportion) == config.execution.ipus_per_replica
    assert config.training.checkpoint_output_dir == f"output/{Path(name).stem}"
    assert config.source == CONFIGS_DIR / name


@pytest.mark.parametrize("name", [n for n in SHIPPED if not n.startswith("squad")])
def test_shipped_model_section_builds_transformers_config(name):
    from ipu_groupbert.models import GroupBertConfig
    from transformers import BertConfig

    config = load_config(name)
    keys = config.model_config_dict()
    assert "model_type" not in keys
    built = GroupBertConfig(**keys) if config.model.model_type == "groupbert" else BertConfig(**keys)
    assert built.hidden_size == config.model.hidden_size
    assert built.num_hidden_layers == config.model.num_hidden_layers
    assert built.intermediate_size == 4 * config.model.hidden_size


SIZES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "medium": (8, 512, 8), "base": (12, 768, 12), "large": (24, 1024, 16)}


@pytest.mark.parametrize("size", SIZES)
def test_shipped_sizes_and_recipes(size):
    layers, hidden, heads = SIZES[size]
    groupbert = load_config(f"groupbert_{size}")
    bert = load_config(f"bert_{size}")
    for config in (groupbert, bert):
        assert (config.model.num_hidden_layers, config.model.hidden_size, config.model.num_attention_heads) == (
            layers, hidden, heads)
        assert (config.data.sequence_length, config.data.mask_tokens) == (128, 20)
    assert groupbert.model.model_type == "groupbert"
    assert (groupbert.model.ffn_groups, groupbert.model.conv_kernel_size, groupbert.model.conv_group_size) == (4, 7, 16)
    assert groupbert.model.layer_norm_eps == 1e-3
    assert groupbert.model.hidden_dropout_prob == 0.0
    assert bert.model.model_type == "bert"
    assert bert.model.layer_norm_eps == 1e-12
    assert bert.model.hidden_dropout_prob == 0.1
    assert bert.model.attention_probs_dropout_prob == 0.1
    # BERT is compared with GroupBERT at the same batch.
    assert bert.derived().global_batch_size == groupbert.derived().global_batch_size


def test_base_recipes_match_published_values():
    phase1 = load_config("groupbert_base")
    assert phase1.training.optimizer == "LAMB"
    assert phase1.training.learning_rate == 0.012
    assert phase1.training.lr_schedule == "power_warmup_linear"
    assert phase1.training.lr_warmup_exponent == 0.5
    assert phase1.derived().global_batch_size == 65536
    phase2 = load_config("groupbert_base_phase2")
    assert phase2.training.learning_rate == 0.01
    assert (phase2.data.sequence_length, phase2.data.mask_tokens) == (384, 56)
    assert 16384 <= phase2.derived().global_batch_size <= 32768
    assert load_config("bert_base").training.learning_rate == 0.006


def test_squad_configs_follow_recipe():
    for name in ["squad_groupbert_base", "squad_groupbert_large", "squad_bert_base"]:
        config = load_config(name)
        assert config.data.sequence_length == 384
        assert (config.squad.doc_stride, config.squad.max_query_length, config.squad.epochs) == (128, 64, 2.0)
        assert config.training.lr_warmup == 0.1
        assert config.training.optimizer == "AdamW"
        assert config.model_overrides() == {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def test_tiny_quick_start_settings():
    config = load_config("groupbert_tiny")
    assert 16 <= config.training.micro_batch_size <= 32
    assert config.training.gradient_accumulation == 1
    assert 300 <= config.training.training_steps <= 600
    assert config.data.dataloader_workers == 1
    assert config.data.vocab_file is None
    assert config.data.input_files == []
    assert config.execution.device == "auto"
    assert config.logging.log_steps == 10
    assert config.training.validation_batches > 0
    assert config.training.checkpoint_output_dir == "output/groupbert_tiny"


# ---------------------------------------------------------------------------------------------
# Malformed configs: each error names the key, the file and the fix


def test_unknown_key_suggests_closest(tiny_file):
    message = error_of(tiny_file, """\
        training:
          trainig_steps: 5
        """)
    assert "unknown key training.trainig_steps; did you mean 'training_steps'?" in message
    assert str(tiny_file.resolve()) in message


def test_key_in_wrong_section_names_home(tiny_file):
    with pytest.raises(ConfigError, match=r"'training_steps' belongs in section 'training', not 'data'"):
        load_config(str(write(tiny_file.parent, "x.yaml", "data:\n  training_steps: 5\n")))


def test_key_at_top_level_rejected(tmp_path):
    path = write(tmp_path, "flat.yaml", "micro_batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"'micro_batch_size' is at the top level; move it under the section `training:`"):
        load_config(str(path))


def test_wrong_type_names_key_and_value(tiny_file):
    message = error_of(tiny_file, """\
        training:
          micro_batch_size: eight
        """)
    assert "training.micro_batch_size must be an integer, got 'eight'" in message
    assert str(tiny_file.resolve()) in message


def test_fractional_value_for_integer_rejected(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  training_steps: 10.5\n")
    with pytest.raises(ConfigError, match=r"training.training_steps must be an integer, got 10.5"):
        load_config(str(path))


def test_nonfinite_number_rejected(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  weight_decay: .nan\n")
    with pytest.raises(ConfigError, match=r"training.weight_decay must be a finite number, got nan"):
        load_config(str(path))


def test_integral_float_accepted_for_integer(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  training_steps: 1e4\n")
    assert load_config(str(path)).training.training_steps == 10000


def test_unknown_section_suggests_closest(tiny_file):
    with pytest.raises(ConfigError, match=r"unknown section 'trainng'.*did you mean 'training'\?"):
        load_config(str(write(tiny_file.parent, "x.yaml", "trainng:\n  training_steps: 5\n")))


def test_bad_enum_value_suggests_choice(tiny_file):
    with pytest.raises(ConfigError, match=r"training.optimizer must be one of LAMB, LAMBNoBiasCorrection, AdamW, "
                                          r"got 'lamb'; did you mean 'LAMB'\?"):
        load_config(str(write(tiny_file.parent, "x.yaml", "training:\n  optimizer: lamb\n")))


def test_layers_per_ipu_wrong_sum_states_both_counts(tmp_path):
    path = write(tmp_path, "x.yaml", """\
        execution:
          ipus_per_replica: 4
          layers_per_ipu: [0, 4, 4, 3]
        """)
    with pytest.raises(ConfigError, match=r"execution.layers_per_ipu .*places 11 layers but num_hidden_layers is 12; "
                                          r"make the entries sum to 12"):
        load_config(str(path))


def test_layers_per_ipu_scalar_wrong_product(tmp_path):
    path = write(tmp_path, "x.yaml", "execution:\n  ipus_per_replica: 4\n  layers_per_ipu: 4\n")
    with pytest.raises(ConfigError, match=r"places 16 layers but num_hidden_layers is 12"):
        load_config(str(path))


def test_layers_per_ipu_wrong_length(tmp_path):
    path = write(tmp_path, "x.yaml", "execution:\n  ipus_per_replica: 4\n  layers_per_ipu: [6, 6]\n")
    with pytest.raises(ConfigError, match=r"layers_per_ipu has 2 entries but ipus_per_replica is 4; give one entry "
                                          r"per IPU or change ipus_per_replica to 2"):
        load_config(str(path))


def test_matmul_proportion_wrong_length(tmp_path):
    path = write(tmp_path, "x.yaml", "execution:\n  matmul_proportion: [0.2, 0.3]\n")
    with pytest.raises(ConfigError, match=r"matmul_proportion has 2 entries but ipus_per_replica is 1"):
        load_config(str(path))


def test_matmul_proportion_out_of_range(tmp_path):
    path = write(tmp_path, "x.yaml", "execution:\n  matmul_proportion: 1.5\n")
    with pytest.raises(ConfigError, match=r"execution.matmul_proportion must be <= 1, got 1.5"):
        load_config(str(path))


def test_hidden_size_not_divisible_by_heads(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  hidden_size: 768\n  num_attention_heads: 10\n")
    with pytest.raises(ConfigError, match=r"model.hidden_size .* = 768 is not divisible by model.num_attention_heads "
                                          r".* = 10; choose a head count that divides the hidden size"):
        load_config(str(path))


def test_ffn_groups_must_divide_sizes(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  ffn_groups: 5\n")
    with pytest.raises(ConfigError, match=r"model.hidden_size .* = 768 is not divisible by model.ffn_groups"):
        load_config(str(path))


def test_groupbert_checks_skipped_for_bert(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  model_type: bert\n  ffn_groups: 5\n  conv_group_size: 100\n")
    config = load_config(str(path))
    assert "ffn_groups" not in config.model_config_dict()
    assert "conv_group_size" not in config.model_config_dict()


def test_even_conv_kernel_rejected(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  conv_kernel_size: 6\n")
    with pytest.raises(ConfigError, match=r"model.conv_kernel_size .* = 6 must be odd.*use 7"):
        load_config(str(path))


def test_mask_tokens_above_sequence_length(tmp_path):
    path = write(tmp_path, "x.yaml", "data:\n  sequence_length: 64\n  mask_tokens: 80\n")
    with pytest.raises(ConfigError, match=r"data.mask_tokens .* = 80 exceeds data.sequence_length .* = 64"):
        load_config(str(path))


def test_sequence_length_above_positions(tmp_path):
    path = write(tmp_path, "x.yaml", "data:\n  sequence_length: 1024\n")
    with pytest.raises(ConfigError, match=r"data.sequence_length .* = 1024 exceeds model.max_position_embeddings "
                                          r".* = 512; shorten the sequences or raise max_position_embeddings"):
        load_config(str(path))


def test_negative_micro_batch_size(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  micro_batch_size: -4\n")
    with pytest.raises(ConfigError, match=r"training.micro_batch_size must be >= 1, got -4"):
        load_config(str(path))


def test_extends_cycle_names_chain(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"`extends:` forms a cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_config(str(tmp_path / "a.yaml"))


def test_extends_shipped_config_by_name(tmp_path):
    path = write(tmp_path, "mine.yaml", "extends: groupbert_tiny\ntraining:\n  training_steps: 7\n")
    config = load_config(str(path))
    assert config.training.training_steps == 7
    assert config.model.hidden_size == 128


def test_extends_missing_target(tmp_path):
    path = write(tmp_path, "child.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"child.yaml: `extends: nowhere.yaml` not found .*relative to this file"):
        load_config(str(path))


def test_duplicate_yaml_key_rejected(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  training_steps: 5\n  training_steps: 6\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'training_steps' appears twice \(first on line 2\)"):
        load_config(str(path))


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path, "x.yaml", "training: [unclosed\n")
    with pytest.raises(ConfigError, match=r"x.yaml: invalid YAML"):
        load_config(str(path))


def test_empty_file_rejected(tmp_path):
    path = write(tmp_path, "x.yaml", "# nothing\n")
    with pytest.raises(ConfigError, match=r"the file is empty"):
        load_config(str(path))


def test_missing_config_lists_available():
    with pytest.raises(ConfigError, match=r"config 'groupbert_huge' not found.*groupbert_tiny"):
        load_config("groupbert_huge")


def test_resume_without_input_dir_means_latest(tmp_path):
    # With no checkpoint_input_dir the trainer resumes from the run folder's latest step_<N>.
    path = write(tmp_path, "x.yaml", "training:\n  resume_training_from_checkpoint: true\n")
    config = load_config(str(path))
    assert config.training.resume_training_from_checkpoint
    assert config.training.checkpoint_input_dir is None


def test_validation_batches_need_held_out_documents(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  validation_batches: 4\n")
    with pytest.raises(ConfigError, match=r"set validation_fraction \(for example 0.02\) or validation_batches: 0"):
        load_config(str(path))


def test_training_steps_multiple_of_device_iterations(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  training_steps: 10\nexecution:\n  device_iterations: 4\n")
    with pytest.raises(ConfigError, match=r"training_steps .* = 10 is not a multiple of execution.device_iterations"):
        load_config(str(path))


def test_serialization_factor_must_divide_vocab(tmp_path):
    path = write(tmp_path, "x.yaml", "execution:\n  embedding_serialization_factor: 4\n")
    with pytest.raises(ConfigError, match=r"model.vocab_size .* = 30522 is not divisible by "
                                          r"execution.embedding_serialization_factor"):
        load_config(str(path))


def test_packing_needs_two_sequences(tmp_path):
    path = write(tmp_path, "x.yaml", "data:\n  packed_data: true\n  max_sequences_per_pack: 1\n")
    with pytest.raises(ConfigError, match=r"set max_sequences_per_pack to 2 or more"):
        load_config(str(path))


def test_squad_epochs_and_steps_conflict():
    with pytest.raises(ConfigError, match=r"both squad.epochs .* and training.training_steps .* are set"):
        load_config("squad_tiny", ["--training-steps", "50"])
    config = load_config("squad_tiny", ["--training-steps", "50", "--squad.epochs", "null"])
    assert config.training.training_steps == 50
    assert config.squad.epochs is None


def test_squad_stride_larger_than_window_is_allowed(tmp_path):
    # The SQuAD preprocessing caps the stride to the room left for context in each window (and
    # counts it), because that room depends on each question's length.
    path = write(tmp_path, "x.yaml", "squad:\n  train_file: t.json\n  doc_stride: 300\ndata:\n  sequence_length: 256\n")
    assert load_config(str(path)).squad.doc_stride == 300


def test_all_errors_reported_together(tmp_path):
    message = error_of(tmp_path / "x.yaml", """\
        training:
          micro_batch_size: 0
          learning_rate: fast
        logging:
          log_step: 5
        """)
    assert "training.micro_batch_size must be >= 1" in message
    assert "training.learning_rate must be a number, got 'fast'" in message
    assert "unknown key logging.log_step; did you mean 'log_steps'?" in message


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def test_override_sectioned_and_flat_spellings(tiny_file):
    sectioned = load_config(str(tiny_file), ["--training.training_steps", "50"])
    flat = load_config(str(tiny_file), ["--training-steps", "50"])
    underscore = load_config(str(tiny_file), ["--training_steps=50"])
    assert sectioned.training.training_steps == 50
    assert flat.training.training_steps == 50
    assert underscore.training.training_steps == 50
    assert flat.provenance["training.training_steps"] == "command line (--training-steps)"


def test_override_lists_flow_and_space_separated():
    args = ["--num-hidden-layers", "12", "--execution.ipus_per_replica", "4"]
    flow = load_config("groupbert_tiny", args + ["--execution.layers_per_ipu", "[0,4,4,4]"])
    spaced = load_config("groupbert_tiny", args + ["--layers-per-ipu", "0", "4", "4", "4"])
    assert flow.execution.layers_per_ipu == [0, 4, 4, 4]
    assert spaced.execution.layers_per_ipu == [0, 4, 4, 4]
    files = load_config("groupbert_tiny", ["--input-files", "a.txt", "b dir/c.txt"])
    assert files.data.input_files == ["a.txt", "b dir/c.txt"]
    single = load_config("groupbert_tiny", ["--input-files", "a.txt"])
    assert single.data.input_files == ["a.txt"]


def test_override_booleans_and_null():
    config = load_config("groupbert_tiny", ["--packed-data", "true", "--max-sequences-per-pack", "2",
                                            "--compile-only", "--wandb", "false", "--max-grad-norm", "null"])
    assert config.data.packed_data is True
    assert config.execution.compile_only is True
    assert config.logging.wandb is False
    assert config.training.max_grad_norm is None
    with pytest.raises(ConfigError, match=r"data.packed_data must be true or false, got 'maybe'"):
        load_config("groupbert_tiny", ["--packed-data", "maybe"])


def test_override_keeps_strings_as_typed():
    config = load_config("groupbert_tiny", ["--checkpoint-output-dir", "123", "--wandb-run-name", "true"])
    assert config.training.checkpoint_output_dir == "123"
    assert config.logging.wandb_run_name == "true"


def test_override_scientific_float():
    config = load_config("groupbert_tiny", ["--learning-rate", "5e-4"])
    assert config.training.learning_rate == pytest.approx(5e-4)


def test_yaml_scientific_float_without_dot(tmp_path):
    path = write(tmp_path, "x.yaml", "training:\n  learning_rate: 1e-5\n  adam_epsilon: 1E-8\n")
    config = load_config(str(path))
    assert config.training.learning_rate == pytest.approx(1e-5)
    assert config.training.adam_epsilon == pytest.approx(1e-8)


def test_bad_override_key_suggests():
    with pytest.raises(ConfigError, match=r"command line: unknown option --trainig-steps; did you mean --training-steps\?"):
        load_config("groupbert_tiny", ["--trainig-steps", "5"])
    with pytest.raises(ConfigError, match=r"unknown section in --trainng.training_steps; did you mean "
                                          r"--training.training_steps\?"):
        load_config("groupbert_tiny", ["--trainng.training_steps", "5"])
    with pytest.raises(ConfigError, match=r"unknown key training.training_step; did you mean 'training_steps'\?"):
        load_config("groupbert_tiny", ["--training.training_step", "5"])


def test_override_needs_value_and_form():
    with pytest.raises(ConfigError, match=r"--training-steps needs a value"):
        load_config("groupbert_tiny", ["--training-steps"])
    with pytest.raises(ConfigError, match=r"--training-steps takes one value, got 2"):
        load_config("groupbert_tiny", ["--training-steps", "5", "6"])
    with pytest.raises(ConfigError, match=r"unexpected argument 'stray'"):
        load_config("groupbert_tiny", ["stray"])


def test_override_error_names_option(tiny_file):
    with pytest.raises(ConfigError, match=r"command line \(--micro-batch-size\): training.micro_batch_size must be "
                                          r">= 1, got 0"):
        load_config(str(tiny_file), ["--micro-batch-size", "0"])


# ---------------------------------------------------------------------------------------------
# extends chains


def test_extends_chain_merges_in_order(tmp_path):
    write(tmp_path, "root.yaml", """\
        model:
          hidden_size: 256
          num_attention_heads: 4
        training:
          training_steps: 100
          learning_rate: 0.001
        """)
    (tmp_path / "sub").mkdir()
    write(tmp_path, "sub/middle.yaml", """\
        extends: ../root.yaml
        training:
          training_steps: 200
        """)
    leaf = write(tmp_path, "leaf.yaml", """\
        extends: sub/middle
        training:
          learning_rate: 0.002
        """)
    config = load_config(str(leaf), ["--micro-batch-size", "3"])
    assert config.model.hidden_size == 256
    assert config.training.training_steps == 200
    assert config.training.learning_rate == 0.002
    assert config.training.micro_batch_size == 3
    assert config.provenance["model.hidden_size"] == str((tmp_path / "root.yaml").resolve())
    assert config.provenance["training.training_steps"] == str((tmp_path / "sub" / "middle.yaml").resolve())
    assert config.provenance["training.learning_rate"] == str(leaf.resolve())
    assert config.name == "leaf"
    assert config.training.checkpoint_output_dir == "output/leaf"


def test_error_names_file_that_set_value(tmp_path):
    write(tmp_path, "base.yaml", "training:\n  micro_batch_size: 0\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml: training.micro_batch_size must be >= 1"):
        load_config(str(child))


def test_bert_configs_extend_groupbert():
    config = load_config("bert_base")
    groupbert = load_config("groupbert_base")
    assert config.execution == groupbert.execution
    assert config.data == groupbert.data


# ---------------------------------------------------------------------------------------------
# Derived values and conversions


def test_derived_batch_sizes(tiny_file):
    config = load_config(str(tiny_file), ["--gradient-accumulation", "3", "--replication-factor", "2",
                                          "--device-iterations", "5", "--sequence-length", "64",
                                          "--mask-tokens", "10"])
    one = config.derived()
    assert one.global_batch_size == 4 * 3 * 2
    assert one.samples_per_step == 24
    assert one.tokens_per_step == 24 * 64
    assert one.host_micro_batches_per_step == 6
    assert one.samples_per_device_call == 24 * 5
    four = config.derived(world_size=4)
    assert four.global_batch_size == 4 * 3 * 2 * 4
    assert four.replicas == 8
    assert four.host_micro_batches_per_step == 6
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        config.derived(world_size=0)


def test_derived_warmup_and_intermediate_size(tiny_file):
    config = load_config(str(tiny_file), ["--lr-warmup", "0.25"])
    derived = config.derived()
    assert derived.warmup_steps == 5
    assert derived.intermediate_size == 512
    assert config.model.intermediate_size == 512


@pytest.mark.parametrize("spec, layers, ipus, expected", [
    ([0, 4, 4, 4], 12, 4, [0, 4, 4, 4]),
    (3, 12, 4, [3, 3, 3, 3]),
    (-1, 12, 4, [3, 3, 3, 3]),
    ([0, -1, -1, -1], 12, 4, [0, 4, 4, 4]),
    ([1, -1, -1, -1], 12, 4, [1, 3, 4, 4]),
    ([-1, 2, -1], 7, 3, [2, 2, 3]),
    ([0, -1, -1, -1, -1, -1, -1, -1], 24, 8, [0, 3, 3, 3, 3, 4, 4, 4]),
    ([12], 12, 1, [12]),
])
def test_expand_layers_per_ipu(spec, layers, ipus, expected):
    assert expand_layers_per_ipu(spec, layers, ipus) == expected


def test_expand_layers_per_ipu_rejects_overflow():
    with pytest.raises(ValueError, match=r"places 14 layers before the -1 entries, but num_hidden_layers is 12"):
        expand_layers_per_ipu([7, 7, -1], 12, 3)
    with pytest.raises(ValueError, match=r"entries must be >= 0 or -1"):
        expand_layers_per_ipu([-2, 14], 12, 2)


def test_derived_expanded_lists_from_config(tmp_path):
    path = write(tmp_path, "x.yaml", """\
        execution:
          ipus_per_replica: 4
          layers_per_ipu: [1, -1, -1, -1]
          matmul_proportion: 0.2
        """)
    derived = load_config(str(path)).derived()
    assert derived.layers_per_ipu == (1, 3, 4, 4)
    assert derived.matmul_proportion == (0.2, 0.2, 0.2, 0.2)


def test_intermediate_size_explicit_kept(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  intermediate_size: 1024\n")
    assert load_config(str(path)).model.intermediate_size == 1024


def test_model_config_dict_for_bert_excludes_groupbert_keys():
    keys = load_config("bert_tiny").model_config_dict()
    assert set(keys) == {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
                         "max_position_embeddings", "type_vocab_size", "initializer_range"}
    groupbert_keys = load_config("groupbert_tiny").model_config_dict()
    assert {"ffn_groups", "conv_kernel_size", "conv_group_size"} <= set(groupbert_keys)


def test_save_and_reload_round_trip(tmp_path):
    config = load_config("groupbert_base_phase2", ["--training-steps", "4000"])
    saved = tmp_path / "run" / "config.yaml"
    config.save(saved)
    reloaded = load_config(str(saved))
    assert reloaded.to_dict() == config.to_dict()
    assert yaml.safe_load(saved.read_text())["training"]["training_steps"] == 4000
    assert not list(saved.parent.glob(".config.yaml.*"))
    assert "squad" not in reloaded.to_dict()


def test_save_squad_config_stays_loadable(tmp_path):
    saved = tmp_path / "config.yaml"
    squad = load_config("squad_tiny")
    squad.save(saved)
    assert load_config(str(saved)).to_dict() == squad.to_dict()
    assert load_config(str(saved)).squad.epochs == 1.0

    derived = squad.updated({"training.training_steps": 537}, source="derived from squad.epochs")
    derived.save(saved)
    replay = load_config(str(saved))
    assert replay.training.training_steps == 537
    assert replay.squad.epochs is None


def test_from_dict_round_trip_and_validation():
    config = load_config("groupbert_tiny")
    rebuilt = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())), source="checkpoint state")
    assert rebuilt.to_dict() == config.to_dict()
    broken = config.to_dict()
    broken["training"]["micro_batch_size"] = 0
    with pytest.raises(ConfigError, match=r"checkpoint state: training.micro_batch_size must be >= 1"):
        RunConfig.from_dict(broken, source="checkpoint state")


def test_updated_revalidates():
    config = load_config("squad_tiny")
    updated = config.updated({"training.training_steps": 537}, source="derived from squad.epochs")
    assert updated.training.training_steps == 537
    assert updated.derived().warmup_steps == 54
    assert config.training.training_steps == 1000
    with pytest.raises(ConfigError, match=r"derived from squad.epochs: training.training_steps must be >= 1"):
        config.updated({"training.training_steps": 0}, source="derived from squad.epochs")


def test_checkpoint_model_replaces_architecture(minilm_dir):
    checkpoint = json.loads((minilm_dir / "config.json").read_text())
    config = load_config("squad_tiny").with_checkpoint_model(checkpoint, source=str(minilm_dir / "config.json"))
    assert config.model.model_type == "bert"
    assert config.model.hidden_size == 384
    assert config.model.num_hidden_layers == 6
    assert config.model.intermediate_size == 1536
    assert config.model.hidden_dropout_prob == 0.1
    assert config.derived().layers_per_ipu == (6,)


def test_checkpoint_model_conflict_rejected(minilm_dir):
    checkpoint = json.loads((minilm_dir / "config.json").read_text())
    config = load_config("squad_tiny", ["--hidden-size", "768"])
    with pytest.raises(ConfigError, match=r"model.hidden_size is 768 but the checkpoint .* has 384; remove "
                                          r"model.hidden_size from the config"):
        config.with_checkpoint_model(checkpoint, source="minilm")


def test_checkpoint_model_revalidates_layer_map():
    config = load_config("squad_groupbert_base", ["--layers-per-ipu", "[0,4,4,4]"])
    with pytest.raises(ConfigError, match=r"places 12 layers but num_hidden_layers is 24"):
        config.with_checkpoint_model({"model_type": "groupbert", "num_hidden_layers": 24, "hidden_size": 1024,
                                      "num_attention_heads": 16}, source="large/config.json")


def test_loading_touches_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_config("groupbert_tiny")
    load_config("groupbert_base")
    assert list(tmp_path.iterdir()) == []


def test_summary_lists_keys_sources_and_derived():
    summary = load_config("groupbert_tiny", ["--training-steps", "50"]).format_summary(world_size=2)
    assert "training.training_steps" in summary
    assert "command line (--training-steps)" in summary
    assert "groupbert_tiny.yaml" in summary
    assert "derived.global_batch_size" in summary
    assert "64" in summary.split("derived.global_batch_size")[1].splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Key table, --help and parse_args


def test_keys_unique_and_documented():
    seen = {}
    for section, cls in SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            assert f.name not in seen, f"{f.name} is in both {seen.get(f.name)} and {section}"
            seen[f.name] = section
            assert key_spec(section, f.name).doc, f"{section}.{f.name} has no documentation"
    assert seen == KEY_SECTIONS


def test_design_key_names_present():
    required = {
        "model": "model_type vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size ffn_groups "
                 "conv_kernel_size conv_group_size hidden_dropout_prob attention_probs_dropout_prob layer_norm_eps "
                 "max_position_embeddings type_vocab_size initializer_range",
        "data": "dataset input_files vocab_file sequence_length mask_tokens mlm_probability next_sentence_prediction "
                "packed_data max_sequences_per_pack dataloader_workers",
        "training": "micro_batch_size gradient_accumulation training_steps optimizer learning_rate lr_schedule "
                    "lr_warmup weight_decay max_grad_norm loss_scaling auto_loss_scaling precision random_seed "
                    "checkpoint_output_dir checkpoint_steps checkpoint_input_dir resume_training_from_checkpoint",
        "execution": "device replication_factor device_iterations ipus_per_replica layers_per_ipu matmul_proportion "
                     "recompute_checkpoint_every_layer embedding_serialization_factor enable_half_partials "
                     "optimizer_state_offchip replicated_tensor_sharding executable_cache_dir compile_only "
                     "synthetic_data",
        "logging": "wandb wandb_project log_steps disable_progress_bar",
    }
    for section, names in required.items():
        for name in names.split():
            assert KEY_SECTIONS.get(name) == section, f"{section}.{name} is missing"


def test_help_lists_keys_with_types_and_defaults():
    text = format_help("Pre-train GroupBERT.", "run_pretraining.py")
    assert "Pre-train GroupBERT." in text
    assert "--training.training_steps, --training-steps" in text
    assert "(int; steps; >= 1; default: 1000)" in text
    assert "--execution.layers_per_ipu, --layers-per-ipu" in text
    assert "int or list of int" in text
    assert "default: -1" in text
    assert "[GroupBERT only]" in text
    for section in SECTION_CLASSES:
        assert f"\n{section}:" in text


def test_parse_args_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--config", "groupbert_tiny", "--help"], description="Pre-train GroupBERT.")
    assert info.value.code == 0
    output = capsys.readouterr().out
    assert "--model.hidden_size, --hidden-size" in output
    assert "groupbert_tiny: 128" in output


def test_parse_args_config_and_overrides():
    config = parse_args(["--config", "groupbert_tiny", "--training-steps", "50", "--config=bert_tiny"],
                        description="x")
    assert config.name == "bert_tiny"
    assert config.training.training_steps == 50


def test_parse_args_errors_exit_two(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--config", "groupbert_tiny", "--trainig-steps", "5"], description="x")
    assert info.value.code == 2
    assert "error: command line: unknown option --trainig-steps" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--config is required; pass a YAML path or one of: .*groupbert_tiny"):
        parse_args([], description="x", exit_on_error=False)
