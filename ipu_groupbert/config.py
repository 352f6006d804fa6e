"""Run configuration: typed sections, YAML files with `extends:`, command-line overrides.

A run is described by one YAML file under `configs/` (or any path) with the sections `model`,
`data`, `training`, `execution`, `logging` and `squad`. Key names follow Graphcore's PopTorch
BERT application and are unique across sections, so every key also has a flat command-line
spelling (`--training-steps 50`) besides the sectioned one (`--training.training_steps 50`).

Every key is a field of a section dataclass below. The field's metadata (`KeySpec`) contains the
one-line documentation, the unit and the allowed range, which both validation and `--help` read.
Values are checked when the file is loaded; each error names the key, the file (or command-line
option) that set it and what to change, and all problems are reported together as one
`ConfigError`.

Path values (input files, output folders) are used as written: relative paths are relative to the
working directory of the run, not to the YAML file. Loading a config reads YAML files and nothing
else: it starts no runtime and creates no folder.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import sys
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

BUILT_IN_DEFAULT = "built-in default"
# Sources of values a program computes (RunConfig.updated) start with this, for example
# "derived from squad.epochs"; squad.epochs may then coexist with training_steps.
DERIVED_PREFIX = "derived"


class ConfigError(ValueError):
    """An invalid run configuration; the message names each key, where it was set and the fix."""


# ---------------------------------------------------------------------------------------------
# Key metadata


@dataclass(frozen=True)
class KeySpec:
    """Documentation and limits of one configuration key.

    The bounds apply to a number, or to each number of a list. `minimum`/`maximum` are
    inclusive; `above`/`below` are exclusive.
    """

    doc: str
    unit: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    groupbert_only: bool = False


def _key(default: Any, doc: str, **limits: Any) -> Any:
    """Declare a dataclass field for a configuration key."""
    spec = KeySpec(doc=doc, **limits)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelConfig:
    """Architecture; becomes the checkpoint's `config.json`."""

    model_type: Literal["groupbert", "bert"] = _key(
        "groupbert", "architecture: GroupBERT (pre-norm, grouped FFN and convolution) or post-norm BERT"
    )
    vocab_size: int = _key(30522, "number of WordPiece tokens in the vocabulary", unit="tokens", minimum=5)
    hidden_size: int = _key(768, "width of the hidden states (H)", unit="features", minimum=1)
    num_hidden_layers: int = _key(12, "number of encoder layers (L)", unit="layers", minimum=1)
    num_attention_heads: int = _key(12, "number of attention heads (A); must divide hidden_size", minimum=1)
    intermediate_size: Optional[int] = _key(
        None, "width of the feed-forward up-projection; null = 4 x hidden_size", unit="features", minimum=1
    )
    ffn_groups: int = _key(
        4, "groups of the grouped FFN down-projection; 1 = dense", minimum=1, groupbert_only=True
    )
    conv_kernel_size: int = _key(
        7, "kernel width of the grouped convolution along the sequence", unit="tokens", minimum=1,
        groupbert_only=True,
    )
    conv_group_size: int = _key(
        16, "channels per group of the grouped convolution", unit="channels", minimum=1, groupbert_only=True
    )
    hidden_dropout_prob: float = _key(
        0.0, "dropout on embeddings and on each residual module's output", minimum=0.0, below=1.0
    )
    attention_probs_dropout_prob: float = _key(
        0.0, "dropout on the attention probabilities", minimum=0.0, below=1.0
    )
    layer_norm_eps: float = _key(1e-3, "epsilon added to the variance in every LayerNorm", above=0.0)
    max_position_embeddings: int = _key(
        512, "number of learned absolute positions; the longest sequence_length", unit="positions", minimum=1
    )
    type_vocab_size: int = _key(2, "number of token types (segments)", minimum=1)
    initializer_range: float = _key(
        0.02, "standard deviation of the truncated normal weight initialisation", above=0.0
    )


@dataclass
class DataConfig:
    """Input data, tokenisation and masking."""

    dataset: Literal["pretraining", "generated"] = _key(
        "pretraining", "pretraining = tokenised text shards; generated = random tokens for throughput runs"
    )
    input_files: list[str] = _key(
        [], "raw inputs (Wikipedia XML dumps, plain text files, folders or globs); empty = built-in Wikipedia sample"
    )
    vocab_file: Optional[str] = _key(
        None, "WordPiece vocabulary file; null = train a vocabulary of vocab_size tokens on the corpus"
    )
    sequence_length: int = _key(128, "tokens per sequence (per packed row)", unit="tokens", minimum=8)
    mask_tokens: int = _key(
        20, "masked-LM slots per row; the most positions a sequence can have masked", unit="tokens", minimum=1
    )
    mlm_probability: float = _key(0.15, "fraction of real tokens chosen for masking", above=0.0, maximum=1.0)
    next_sentence_prediction: bool = _key(True, "build sentence pairs and train the next-sentence head")
    packed_data: bool = _key(False, "pack several short sequences into one row")
    max_sequences_per_pack: int = _key(
        3, "most sequences in one packed row", unit="sequences", minimum=1
    )
    dataloader_workers: int = _key(2, "data loader worker processes; 0 = load in the main process", minimum=0)
    whole_word_masking: bool = _key(False, "mask all WordPiece pieces of a chosen word together")
    short_seq_prob: float = _key(
        0.1, "probability of building a shorter sequence than sequence_length", minimum=0.0, maximum=1.0
    )
    validation_fraction: float = _key(
        0.0, "fraction of documents held out for the final evaluation", minimum=0.0, below=1.0
    )
    prepared_data_dir: str = _key(
        "data/pretraining", "folder where raw inputs are tokenised into shards (reused when up to date)"
    )


@dataclass
class TrainingConfig:
    """Optimisation, precision and checkpoints."""

    micro_batch_size: int = _key(8, "samples per replica per forward pass", unit="samples", minimum=1)
    gradient_accumulation: int = _key(
        1, "micro-batches accumulated per optimizer step on each replica", unit="micro-batches", minimum=1
    )
    training_steps: int = _key(1000, "optimizer steps of the run", unit="steps", minimum=1)
    optimizer: Literal["LAMB", "LAMBNoBiasCorrection", "AdamW"] = _key(
        "LAMB", "LAMB (You et al. 2019), LAMB without Adam bias correction, or AdamW"
    )
    learning_rate: float = _key(0.006, "peak learning rate", above=0.0)
    lr_schedule: Literal["linear", "power_warmup_linear", "polynomial", "constant"] = _key(
        "linear",
        "linear: linear warm-up, linear decay to 0 | power_warmup_linear: (step/warmup)^lr_warmup_exponent "
        "warm-up, linear decay to 0 | polynomial: the same warm-up, decay (1-progress)^lr_decay_power "
        "to 0 | constant: linear warm-up, then constant",
    )
    lr_warmup: float = _key(
        0.1, "warm-up length as a fraction of training_steps", unit="fraction of steps", minimum=0.0, maximum=1.0
    )
    weight_decay: float = _key(
        0.01, "decoupled weight decay, applied only to tensors with two or more dimensions", minimum=0.0
    )
    max_grad_norm: Optional[float] = _key(
        None, "clip the global gradient L2 norm to this value; null = no clipping", above=0.0
    )
    loss_scaling: float = _key(
        1.0, "fp16 loss scale (the starting value when auto_loss_scaling is true)", above=0.0
    )
    auto_loss_scaling: bool = _key(False, "adjust the fp16 loss scale automatically when gradients overflow")
    precision: Literal["fp32", "bf16", "fp16"] = _key("fp32", "precision of the forward and backward passes")
    random_seed: int = _key(42, "seed for weight initialisation, masking and data order", minimum=0)
    checkpoint_output_dir: Optional[str] = _key(
        None, "run folder for checkpoints, metrics and the resolved config; null = output/<config name>"
    )
    checkpoint_steps: int = _key(
        0, "save a checkpoint every this many steps; 0 = only at the end", unit="steps", minimum=0
    )
    checkpoint_input_dir: Optional[str] = _key(
        None, "checkpoint to start from: a step_<N> folder or a Hugging Face model folder; null = random init"
    )
    resume_training_from_checkpoint: bool = _key(
        False, "also restore optimizer, schedule, step and data position from checkpoint_input_dir, or "
        "from the latest step_<N> in checkpoint_output_dir when checkpoint_input_dir is null"
    )
    lr_warmup_exponent: float = _key(
        0.5, "exponent of the power warm-up (power_warmup_linear, polynomial); 1 = linear", above=0.0
    )
    lr_decay_power: float = _key(1.0, "exponent of the polynomial decay; 1 = linear", above=0.0)
    adam_beta1: float = _key(0.9, "decay rate of the first-moment estimate", minimum=0.0, below=1.0)
    adam_beta2: float = _key(0.999, "decay rate of the second-moment estimate", minimum=0.0, below=1.0)
    adam_epsilon: float = _key(1e-6, "term added to the root of the second moment", above=0.0)
    max_nonfinite_steps: int = _key(
        10, "consecutive steps skipped for non-finite fp16 gradients before the run stops", unit="steps", minimum=1
    )
    min_loss_scale: float = _key(1.0, "floor of the automatic fp16 loss scale", above=0.0)
    validation_batches: int = _key(
        0, "batches of held-out text evaluated at the end; 0 = no evaluation", unit="batches", minimum=0
    )
    overwrite_output_dir: bool = _key(
        False, "allow a run to write into a checkpoint_output_dir that already holds checkpoints"
    )


@dataclass
class ExecutionConfig:
    """Execution settings: device, replication and IPU options; never saved into the model's config.json."""

    device: Literal["auto", "cpu", "cuda", "ipu"] = _key(
        "auto", "auto = IPU when PopTorch and IPUs are present, else CUDA when available, else CPU"
    )
    replication_factor: int = _key(
        1, "data-parallel replicas per process; on the host, extra micro-batches accumulated instead",
        unit="replicas", minimum=1,
    )
    device_iterations: int = _key(
        1, "optimizer steps the IPU runs per host call (IPU only)", unit="steps", minimum=1
    )
    ipus_per_replica: int = _key(1, "IPUs one model replica is pipelined over (IPU only)", unit="IPUs", minimum=1)
    layers_per_ipu: Union[int, list[int]] = _key(
        -1, "encoder layers on each IPU: a list (one entry per IPU), a scalar (that many per IPU), "
        "-1 entries share the remaining layers evenly (IPU only)", unit="layers", minimum=-1,
    )
    matmul_proportion: Union[float, list[float]] = _key(
        0.6, "fraction of IPU tile memory for matmul temporaries: a scalar or one per IPU (IPU only)",
        above=0.0, maximum=1.0,
    )
    recompute_checkpoint_every_layer: bool = _key(
        False, "recompute activations from a checkpoint at each layer boundary during backward (IPU only)"
    )
    embedding_serialization_factor: int = _key(
        1, "split the word-embedding and MLM decoder matmuls into this many pieces (IPU only)", minimum=1
    )
    enable_half_partials: bool = _key(False, "accumulate matmul and convolution partials in fp16 (IPU only)")
    optimizer_state_offchip: bool = _key(False, "keep optimizer state in streaming memory (IPU only)")
    replicated_tensor_sharding: bool = _key(
        False, "shard optimizer state across replicas (IPU only)"
    )
    executable_cache_dir: Optional[str] = _key(
        None, "folder caching compiled IPU executables; null = no cache (IPU only)"
    )
    compile_only: bool = _key(False, "compile the IPU executable and exit without training (IPU only)")
    synthetic_data: bool = _key(
        False, "keep input data on the IPU and skip host transfers, to measure compute throughput (IPU only)"
    )
    torch_compile: bool = _key(False, "wrap the model in torch.compile (CPU and CUDA only)")
    enable_stochastic_rounding: bool = _key(True, "round fp16 results stochastically (IPU only)")


@dataclass
class LoggingConfig:
    """Console, metrics file and Weights & Biases."""

    wandb: bool = _key(False, "log metrics to Weights & Biases")
    wandb_project: str = _key("groupbert", "Weights & Biases project name")
    log_steps: int = _key(10, "log metrics every this many steps", unit="steps", minimum=1)
    disable_progress_bar: bool = _key(False, "hide the progress bar (for non-interactive logs)")
    wandb_run_name: Optional[str] = _key(None, "Weights & Biases run name; null = the config name")


@dataclass
class SquadConfig:
    """SQuAD fine-tuning and evaluation (run_squad.py).

    Predictions and the evaluation result are written to training.checkpoint_output_dir, the
    run's one output folder.
    """

    train_file: Optional[str] = _key(None, "SQuAD JSON file to fine-tune on; null = skip fine-tuning")
    predict_file: Optional[str] = _key(None, "SQuAD JSON file to predict and score; null = skip evaluation")
    version_2_with_negative: bool = _key(False, "SQuAD v2.0: questions may have no answer")
    doc_stride: int = _key(128, "tokens between the starts of overlapping context windows", unit="tokens", minimum=1)
    max_query_length: int = _key(64, "question tokens kept; longer questions are truncated", unit="tokens", minimum=1)
    n_best_size: int = _key(20, "start and end candidates considered per window", minimum=1)
    max_answer_length: int = _key(30, "longest predicted answer", unit="tokens", minimum=1)
    null_score_diff_threshold: float = _key(
        0.0, "SQuAD v2.0: predict no answer when null score minus best span score exceeds this"
    )
    epochs: Optional[float] = _key(
        None, "passes over the training features; training_steps is derived from it; null = use training_steps",
        unit="epochs", above=0.0,
    )
    tokenizer: Optional[str] = _key(
        None, "tokenizer folder or vocabulary file; null = the one saved with checkpoint_input_dir"
    )


SECTION_CLASSES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "execution": ExecutionConfig,
    "logging": LoggingConfig,
    "squad": SquadConfig,
}

# Built once at import from the dataclasses (pure computation).
_TYPE_HINTS: dict[str, dict[str, Any]] = {
    name: typing.get_type_hints(cls) for name, cls in SECTION_CLASSES.items()
}
KEY_SECTIONS: dict[str, str] = {
    f.name: section for section, cls in SECTION_CLASSES.items() for f in dataclasses.fields(cls)
}


def key_spec(section: str, key: str) -> KeySpec:
    """Return the documentation and limits of `section.key`."""
    for f in dataclasses.fields(SECTION_CLASSES[section]):
        if f.name == key:
            return f.metadata["spec"]
    raise KeyError(f"{section}.{key}")


def key_default(section: str, key: str) -> Any:
    """Return the built-in default of `section.key`."""
    for f in dataclasses.fields(SECTION_CLASSES[section]):
        if f.name == key:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(f"{section}.{key}")


# ---------------------------------------------------------------------------------------------
# Values: types and limits


class _InvalidValue(Exception):
    """A value that does not fit its key's type or limits; the text completes '<key> ...'."""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Return (the type without None, whether None is allowed)."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional
    return tp, False


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def describe_type(tp: Any) -> str:
    """Return a short human-readable name of a key's type, as shown by `--help`."""
    base, optional = _strip_optional(tp)
    if typing.get_origin(base) is Literal:
        text = "|".join(str(a) for a in typing.get_args(base))
    elif _is_union(base):
        text = " or ".join(describe_type(a) for a in typing.get_args(base))
    elif typing.get_origin(base) is list:
        text = f"list of {describe_type(typing.get_args(base)[0])}"
    else:
        text = base.__name__
    return f"{text} or null" if optional else text


def _convert(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise _InvalidValue.

    Three conversions are accepted: an int for a float, a float with an integral value for an
    int (YAML reads `1e4` as a float), and a single string for a list of strings. A bool is
    never taken as a number, although Python makes bool a subclass of int.
    """
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise _InvalidValue(f"must be a {describe_type(tp)}, got null")

    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value in choices:
            return value
        hint = _closest(str(value), [str(c) for c in choices], ignore_case=True)
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise _InvalidValue(f"must be one of {', '.join(map(str, choices))}, got {value!r}{suggestion}")

    if _is_union(base):
        for option in typing.get_args(base):
            try:
                return _convert(value, option)
            except _InvalidValue:
                continue
        raise _InvalidValue(f"must be a {describe_type(tp)}, got {value!r}")

    if typing.get_origin(base) is list:
        (element_type,) = typing.get_args(base)
        if isinstance(value, str) and element_type is str:
            return [value]
        if not isinstance(value, list):
            raise _InvalidValue(f"must be a {describe_type(base)}, got {value!r}")
        converted = []
        for index, element in enumerate(value):
            try:
                converted.append(_convert(element, element_type))
            except _InvalidValue as problem:
                raise _InvalidValue(f"entry {index} {problem}") from None
        return converted

    if base is bool:
        if isinstance(value, bool):
            return value
        raise _InvalidValue(f"must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _InvalidValue(f"must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _InvalidValue(f"must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise _InvalidValue(f"must be a string, got {value!r}; quote it in YAML")
    raise TypeError(f"unsupported configuration type {tp!r}")


def _check_limits(value: Any, spec: KeySpec) -> None:
    """Raise _InvalidValue when a number (or a number in a list) is outside the key's range."""
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        if not math.isfinite(number):
            raise _InvalidValue(f"must be a finite number, got {number!r}")
        if spec.minimum is not None and number < spec.minimum:
            raise _InvalidValue(f"must be >= {spec.minimum:g}, got {number!r}")
        if spec.maximum is not None and number > spec.maximum:
            raise _InvalidValue(f"must be <= {spec.maximum:g}, got {number!r}")
        if spec.above is not None and not number > spec.above:
            raise _InvalidValue(f"must be > {spec.above:g}, got {number!r}")
        if spec.below is not None and not number < spec.below:
            raise _InvalidValue(f"must be < {spec.below:g}, got {number!r}")


def describe_limits(spec: KeySpec) -> str:
    """Return the allowed range of a key as text, for example '>= 1' or '> 0 and <= 1'."""
    parts = []
    if spec.minimum is not None:
        parts.append(f">= {spec.minimum:g}")
    if spec.above is not None:
        parts.append(f"> {spec.above:g}")
    if spec.maximum is not None:
        parts.append(f"<= {spec.maximum:g}")
    if spec.below is not None:
        parts.append(f"< {spec.below:g}")
    return " and ".join(parts)


def _closest(word: str, candidates: list[str], *, ignore_case: bool = False) -> Optional[str]:
    """Return the candidate most similar to `word`, or None when none is close."""
    if ignore_case:
        for candidate in candidates:
            if candidate.lower() == word.lower():
                return candidate
        lowered = {c.lower(): c for c in candidates}
        match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        return lowered[match[0]] if match else None
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


# ---------------------------------------------------------------------------------------------
# YAML reading


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float and rejects duplicate keys.

    YAML 1.1, which PyYAML implements, needs a dot in a float (`1.0e-5`); without this resolver
    `learning_rate: 1e-5` would load as the string "1e-5".
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}: line {line}: key {key!r} appears twice (first on line "
                    f"{seen[key]}); YAML would keep only the last value, so delete one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml_text(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{name}: invalid YAML: {error}") from None


def available_configs(folder: Path = CONFIGS_DIR) -> list[str]:
    """Return the names of the YAML files in `folder` (the shipped configs by default)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))


def resolve_config_path(name_or_path: str) -> Path:
    """Return the YAML file that `--config` names: a path, or a name under `configs/`.

    A name may omit `.yaml`. Raises ConfigError listing the shipped configs when nothing matches.
    """
    candidates = [Path(name_or_path)]
    if not Path(name_or_path).suffix:
        candidates.append(Path(name_or_path + ".yaml"))
    if len(Path(name_or_path).parts) == 1:
        candidates += [CONFIGS_DIR / c for c in candidates]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(Path(n).stem for n in available_configs())
    raise ConfigError(
        f"config {name_or_path!r} not found (looked for {', '.join(str(c) for c in candidates)}); "
        f"pass a path to a YAML file or one of the configs in {CONFIGS_DIR}: {names}"
    )


def _read_chain(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """Return the files of an `extends:` chain, the root base first, each with its sections."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(p.name for p in stack + (path,))
        raise ConfigError(f"{stack[-1]}: `extends:` forms a cycle ({chain}); remove one of these `extends:` lines")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from None
    data = _parse_yaml_text(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a config needs at least one section or an `extends:` line")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (model:, data:, training:, ...), "
            f"got {type(data).__name__}"
        )

    parent_name = data.pop("extends", None)
    if parent_name is None:
        return [(path, data)]
    if not isinstance(parent_name, str) or not parent_name:
        raise ConfigError(f"{path}: `extends:` must be a file name or path, got {parent_name!r}")
    # A relative name is looked up beside this file first, then among the shipped configs, so a
    # user's own file may extend `groupbert_base.yaml` without a path.
    candidates = [path.parent / parent_name]
    if not Path(parent_name).is_absolute():
        candidates.append(CONFIGS_DIR / parent_name)
    parent = candidates[0]
    for candidate in candidates:
        if not candidate.is_file() and not candidate.suffix and candidate.with_suffix(".yaml").is_file():
            candidate = candidate.with_suffix(".yaml")
        if candidate.is_file():
            parent = candidate
            break
    if not parent.is_file():
        names = ", ".join(available_configs(path.parent)) or "none"
        raise ConfigError(
            f"{path}: `extends: {parent_name}` not found beside this file ({names}) or among the shipped "
            f"configs in {CONFIGS_DIR}; give a path relative to this file's folder"
        )
    return _read_chain(parent, stack + (path,)) + [(path, data)]


# ---------------------------------------------------------------------------------------------
# Raw values with provenance


@dataclass
class _RawValue:
    value: Any
    source: str  # file path, or "command line (--option)"
    from_command_line: bool = False


def _unknown_key_message(where: str, section: str, key: Any) -> str:
    key = str(key)
    if key in KEY_SECTIONS:
        home = KEY_SECTIONS[key]
        return f"{where}: key {key!r} belongs in section {home!r}, not {section!r}; move it under `{home}:`"
    valid = [f.name for f in dataclasses.fields(SECTION_CLASSES[section])]
    hint = _closest(key, valid) or _closest(key, list(KEY_SECTIONS))
    fix = f"did you mean {hint!r}?" if hint else f"valid keys are: {', '.join(valid)}"
    return f"{where}: unknown key {section}.{key}; {fix}"


def _collect_file_values(path: Path, data: dict, raw: dict, errors: list[str], present: set[str]) -> None:
    for section, values in data.items():
        if section not in SECTION_CLASSES:
            if section in KEY_SECTIONS:
                home = KEY_SECTIONS[section]
                errors.append(
                    f"{path}: key {section!r} is at the top level; move it under the section `{home}:`"
                )
                continue
            hint = _closest(str(section), list(SECTION_CLASSES))
            fix = f"did you mean {hint!r}?" if hint else ""
            errors.append(
                f"{path}: unknown section {section!r}; sections are {', '.join(SECTION_CLASSES)} "
                f"(and `extends:`) {fix}".rstrip()
            )
            continue
        present.add(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            errors.append(f"{path}: section {section!r} must be a mapping of keys, got {values!r}")
            continue
        for key, value in values.items():
            if not isinstance(key, str) or _section_of(section, key) is None:
                errors.append(_unknown_key_message(str(path), section, key))
                continue
            raw[(section, key)] = _RawValue(value, str(path))


def _section_of(section: str, key: str) -> Optional[str]:
    return section if KEY_SECTIONS.get(key) == section else None


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def option_names(section: str, key: str) -> tuple[str, str]:
    """Return the sectioned and the flat command-line spelling of a key."""
    return f"--{section}.{key}", "--" + key.replace("_", "-")


def _resolve_option(option: str) -> tuple[str, str]:
    """Return (section, key) for `--section.key`, `--key-name` or `--key_name`."""
    name = option[2:]
    if "." in name:
        section, _, key = name.partition(".")
        if section not in SECTION_CLASSES:
            hint = _closest(section, list(SECTION_CLASSES))
            fix = f"did you mean --{hint}.{key}?" if hint else f"sections are {', '.join(SECTION_CLASSES)}"
            raise ConfigError(f"command line: unknown section in {option}; {fix}")
        if KEY_SECTIONS.get(key) != section:
            raise ConfigError(_unknown_key_message(f"command line ({option})", section, key))
        return section, key
    key = name.replace("-", "_")
    if key in KEY_SECTIONS:
        return KEY_SECTIONS[key], key
    flat = ["--" + k.replace("_", "-") for k in KEY_SECTIONS]
    hint = _closest("--" + key.replace("_", "-"), flat)
    fix = f"did you mean {hint}?" if hint else "run with --help to list the keys"
    raise ConfigError(f"command line: unknown option {option}; {fix}")


def _value_from_text(text: str, tp: Any) -> Any:
    """Read one command-line value: YAML flow text, except that strings stay as typed."""
    base, optional = _strip_optional(tp)
    if optional and text.strip().lower() in ("null", "none", "~"):
        return None
    takes_raw_text = base is str or (
        typing.get_origin(base) is Literal and all(isinstance(a, str) for a in typing.get_args(base))
    )
    if takes_raw_text:
        return text
    if typing.get_origin(base) is list and typing.get_args(base)[0] is str and not text.lstrip().startswith("["):
        return [text]
    return _parse_yaml_text(text, "command line")


def _collect_overrides(tokens: list[str], raw: dict) -> None:
    """Parse `--section.key VALUE...` tokens into `raw`; errors name the option and the fix."""
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or token == "--":
            raise ConfigError(
                f"command line: unexpected argument {token!r}; overrides take the form "
                f"--section.key VALUE or --key-name VALUE"
            )
        option, has_equals, inline = token.partition("=")
        section, key = _resolve_option(option)
        index += 1
        if has_equals:
            texts = [inline]
        else:
            texts = []
            while index < len(tokens) and not tokens[index].startswith("--"):
                texts.append(tokens[index])
                index += 1
        tp = _TYPE_HINTS[section][key]
        base, _ = _strip_optional(tp)
        accepts_list = typing.get_origin(base) is list or (
            _is_union(base) and any(typing.get_origin(a) is list for a in typing.get_args(base))
        )
        if not texts:
            if base is bool:
                value: Any = True  # a bare boolean flag, as in `--compile-only`
            else:
                raise ConfigError(f"command line: {option} needs a value ({describe_type(tp)})")
        elif len(texts) == 1:
            value = _value_from_text(texts[0], tp)
        elif accepts_list:
            list_type = base if typing.get_origin(base) is list else next(
                a for a in typing.get_args(base) if typing.get_origin(a) is list
            )
            element_type = typing.get_args(list_type)[0]
            value = [_value_from_text(t, element_type) for t in texts]
        else:
            raise ConfigError(
                f"command line: {option} takes one value, got {len(texts)}: {' '.join(texts)}; "
                f"quote a value that contains spaces"
            )
        raw[(section, key)] = _RawValue(value, f"command line ({option})", from_command_line=True)


# ---------------------------------------------------------------------------------------------
# The run configuration


@dataclass(frozen=True)
class DerivedValues:
    """Values computed from the configuration, in one place, for the start log and the trainer.

    world_size is the number of processes: PopDist instances on IPUs, the torch.distributed world
    size on the host. Each process runs replication_factor replicas (on the host, a process
    reproduces them by accumulating replication_factor x gradient_accumulation micro-batches).
    """

    world_size: int
    replicas: int  # replication_factor x world_size
    global_batch_size: int  # samples (rows) per optimizer step
    samples_per_step: int  # = global_batch_size
    tokens_per_step: int  # global_batch_size x sequence_length, padding included
    host_micro_batches_per_step: int  # micro-batches one host process accumulates per step
    samples_per_device_call: int  # IPU: samples per host call (device_iterations steps)
    warmup_steps: int
    layers_per_ipu: tuple[int, ...]  # expanded, one entry per IPU, sums to num_hidden_layers
    matmul_proportion: tuple[float, ...]  # one entry per IPU
    intermediate_size: int


@dataclass
class RunConfig:
    """A validated run configuration.

    `source` is the YAML file it was loaded from, or None when it was built from a dict.
    `provenance` maps "section.key" to the origin of each explicitly set value (a file path or a
    command-line option), and `explicit_keys` lists those keys. The other keys have their
    built-in defaults.
    """

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    execution: ExecutionConfig
    logging: LoggingConfig
    squad: SquadConfig
    source: Optional[Path] = None
    provenance: dict[str, str] = field(default_factory=dict)
    sections_present: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """Config name: the YAML file's stem, or "run" when built from a dict."""
        return self.source.stem if self.source is not None else "run"

    @property
    def explicit_keys(self) -> frozenset[str]:
        return frozenset(self.provenance)

    # -- conversion ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return every key of every section as plain YAML-ready values.

        The squad section is included only when the configuration has one, so a saved
        pre-training config does not turn into a SQuAD config (whose extra checks would apply).
        A file may not set both squad.epochs and training_steps, so the result leaves one out to
        stay loadable. Once training_steps has been derived from the epochs (`updated` with a
        "derived ..." source), epochs is written as null and the file replays the same number of
        steps. Before that, training_steps is left out.
        """
        values = {
            name: dataclasses.asdict(getattr(self, name))
            for name in SECTION_CLASSES
            if name != "squad" or "squad" in self.sections_present
        }
        if "squad" in values and self.squad.epochs is not None:
            steps_origin = self.provenance.get("training.training_steps", "")
            if steps_origin.startswith(DERIVED_PREFIX):
                values["squad"]["epochs"] = None
            else:
                del values["training"]["training_steps"]
        return values

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the resolved configuration as YAML (atomically: a temporary file, then a rename)."""
        path = Path(path)
        header = f"# Resolved run configuration (from {self.source or 'a dictionary'}); loadable with --config.\n"
        text = header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                         encoding="utf-8") as handle:
            handle.write(text)
            temporary = Path(handle.name)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # NamedTemporaryFile creates files readable by the owner only
        os.replace(temporary, path)

    def model_config_dict(self) -> dict[str, Any]:
        """Return the model keys for the `transformers` config class (model_type excluded).

        For `model_type: bert` the GroupBERT-only keys are left out, so a BertConfig built from
        them matches Hugging Face BERT's config.json.
        """
        values = dataclasses.asdict(self.model)
        del values["model_type"]
        if self.model.model_type == "bert":
            for key in _groupbert_only_keys():
                del values[key]
        return values

    def model_overrides(self) -> dict[str, Any]:
        """Return the model keys set explicitly (in a file or on the command line).

        Fine-tuning takes the architecture from the checkpoint's config.json and applies only these
        on top (for example the dropout rates); built-in defaults are not applied.
        """
        return {
            key: getattr(self.model, key)
            for key in self.model_config_dict()
            if f"model.{key}" in self.provenance
        }

    # -- validated copies ---------------------------------------------------------------------

    def updated(self, values: dict[str, Any], *, source: str) -> "RunConfig":
        """Return a validated copy with `{"section.key": value}` replaced.

        `source` names the origin of the values (for example "derived from squad.epochs"); error
        messages quote it. Keys left at their defaults are recomputed (intermediate_size follows a
        new hidden_size).
        """
        raw = self._explicit_raw_values()
        for dotted, value in values.items():
            section, _, key = dotted.partition(".")
            if section not in SECTION_CLASSES or KEY_SECTIONS.get(key) != section:
                raise ConfigError(_unknown_key_message(source, section, key))
            raw[(section, key)] = _RawValue(value, source)
        present = set(self.sections_present) | {section for section, _ in raw}
        return _build(raw, present, self.source)

    def with_checkpoint_model(self, checkpoint_model: dict[str, Any], *, source: str) -> "RunConfig":
        """Return a validated copy whose model section comes from a checkpoint's config.json.

        Fine-tuning and continued pre-training take the architecture from the checkpoint. Model
        keys set explicitly in the config keep their value: the dropout rates and
        initializer_range may differ from the checkpoint, any other key must equal it, otherwise
        ConfigError names both values. Keys the checkpoint lacks (a BERT checkpoint has no
        ffn_groups) keep their config value. The copy is validated again, so layers_per_ipu and
        sequence_length are checked against the real layer count and position table.
        """
        problems = []
        values = {}
        for key in (f.name for f in dataclasses.fields(ModelConfig)):
            if key not in checkpoint_model:
                continue
            dotted = f"model.{key}"
            ours, theirs = getattr(self.model, key), checkpoint_model[key]
            if dotted not in self.provenance:
                values[dotted] = theirs
            elif key not in _FINE_TUNING_MODEL_KEYS and ours != theirs:
                problems.append(
                    f"{self.provenance[dotted]}: model.{key} is {ours!r} but the checkpoint {source} has "
                    f"{theirs!r}; remove model.{key} from the config, because the checkpoint defines the "
                    f"architecture"
                )
        if problems:
            raise ConfigError("\n".join(problems))
        return self.updated(values, source=f"checkpoint {source}")

    def _explicit_raw_values(self) -> dict[tuple[str, str], "_RawValue"]:
        raw = {}
        for dotted, origin in self.provenance.items():
            section, _, key = dotted.partition(".")
            value = getattr(getattr(self, section), key)
            raw[(section, key)] = _RawValue(copy.deepcopy(value), origin)
        return raw

    # -- derived values -----------------------------------------------------------------------

    def derived(self, world_size: int = 1) -> DerivedValues:
        """Return the derived values for `world_size` processes (PopDist instances or torch ranks)."""
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        training, execution = self.training, self.execution
        replicas = execution.replication_factor * world_size
        global_batch = training.micro_batch_size * training.gradient_accumulation * replicas
        return DerivedValues(
            world_size=world_size,
            replicas=replicas,
            global_batch_size=global_batch,
            samples_per_step=global_batch,
            tokens_per_step=global_batch * self.data.sequence_length,
            host_micro_batches_per_step=training.gradient_accumulation * execution.replication_factor,
            samples_per_device_call=global_batch * execution.device_iterations,
            warmup_steps=warmup_steps(training),
            layers_per_ipu=tuple(expand_layers_per_ipu(
                execution.layers_per_ipu, self.model.num_hidden_layers, execution.ipus_per_replica)),
            matmul_proportion=tuple(expand_matmul_proportion(
                execution.matmul_proportion, execution.ipus_per_replica)),
            intermediate_size=self.model.intermediate_size,
        )

    def format_summary(self, world_size: int = 1) -> str:
        """Return a table of every key (marking where non-default values were set) and the derived values."""
        rows: list[tuple[str, str, str]] = []
        for section in SECTION_CLASSES:
            if section == "squad" and "squad" not in self.sections_present:
                continue
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                origin = self.provenance.get(f"{section}.{key}", "")
                if origin and self.source is not None and origin == str(self.source.resolve()):
                    origin = self.source.name
                elif origin and not origin.startswith("command line"):
                    origin = Path(origin).name
                rows.append((f"{section}.{key}", _format_value(value), origin))
        derived = self.derived(world_size)
        for key, value in dataclasses.asdict(derived).items():
            rows.append((f"derived.{key}", _format_value(value), ""))
        width = max(len(r[0]) for r in rows)
        value_width = min(40, max(len(r[1]) for r in rows))
        lines = [f"run configuration {self.name} ({self.source or 'built from a dictionary'})"]
        for name, value, origin in rows:
            line = f"  {name:<{width}}  {value:<{value_width}}"
            lines.append(f"{line}  [{origin}]".rstrip() if origin else line.rstrip())
        return "\n".join(lines)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, sections: dict, *, source: str = "dictionary") -> "RunConfig":
        """Build and validate a configuration from `{section: {key: value}}` (for example a checkpoint's copy)."""
        if not isinstance(sections, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(sections).__name__}")
        raw: dict[tuple[str, str], _RawValue] = {}
        errors: list[str] = []
        present: set[str] = set()
        _collect_file_values(Path(source), sections, raw, errors, present)
        return _build(raw, present, source_path=None, errors=errors)


# Model keys that fine-tuning may set differently from the pre-trained checkpoint.
_FINE_TUNING_MODEL_KEYS = frozenset({"hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range"})


def _groupbert_only_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig) if f.metadata["spec"].groupbert_only]


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Derived-value helpers


def warmup_steps(training: TrainingConfig, total_steps: Optional[int] = None) -> int:
    """Return the number of warm-up steps: lr_warmup x total_steps (default training_steps), rounded half up."""
    steps = training.training_steps if total_steps is None else total_steps
    return math.floor(training.lr_warmup * steps + 0.5)


def expand_layers_per_ipu(layers_per_ipu: Union[int, list[int]], num_layers: int, ipus: int) -> list[int]:
    """Return the encoder layers on each IPU of a replica, one entry per IPU.

    A scalar n means n layers on every IPU (scalar -1: all layers spread evenly). In a list, -1
    entries share the layers the other entries leave; when they do not divide evenly, the later
    -1 entries take one more, because IPU 0 also carries the embeddings. Raises ValueError with the
    counts when the result cannot sum to `num_layers`.
    """
    entries = [layers_per_ipu] * ipus if isinstance(layers_per_ipu, int) else list(layers_per_ipu)
    if len(entries) != ipus:
        raise ValueError(
            f"layers_per_ipu has {len(entries)} entries but ipus_per_replica is {ipus}; "
            f"give one entry per IPU or change ipus_per_replica to {len(entries)}"
        )
    if any(n < -1 for n in entries):
        raise ValueError(f"layers_per_ipu entries must be >= 0 or -1 (share the rest), got {entries}")
    fixed = sum(n for n in entries if n >= 0)
    wildcards = [i for i, n in enumerate(entries) if n == -1]
    if wildcards:
        remaining = num_layers - fixed
        if remaining < 0:
            raise ValueError(
                f"layers_per_ipu {entries} places {fixed} layers before the -1 entries, but num_hidden_layers "
                f"is {num_layers}; lower the fixed entries"
            )
        share, extra = divmod(remaining, len(wildcards))
        for rank, index in enumerate(wildcards):
            entries[index] = share + (1 if rank >= len(wildcards) - extra else 0)
    total = sum(entries)
    if total != num_layers:
        raise ValueError(
            f"layers_per_ipu {layers_per_ipu} places {total} layers but num_hidden_layers is {num_layers}; "
            f"make the entries sum to {num_layers} (or use -1 entries to split the rest evenly)"
        )
    return entries


def expand_matmul_proportion(proportion: Union[float, list[float]], ipus: int) -> list[float]:
    """Return the matmul memory proportion of each IPU of a replica."""
    if isinstance(proportion, (int, float)):
        return [float(proportion)] * ipus
    if len(proportion) != ipus:
        raise ValueError(
            f"matmul_proportion has {len(proportion)} entries but ipus_per_replica is {ipus}; "
            f"give one value per IPU or a single value for all"
        )
    return [float(p) for p in proportion]


# ---------------------------------------------------------------------------------------------
# Validation


def _build(
    raw: dict[tuple[str, str], _RawValue], present: set[str], source_path: Optional[Path],
    errors: Optional[list[str]] = None,
) -> RunConfig:
    """Convert and check every value, then the combinations; `errors` lists earlier structural problems."""
    errors = list(errors or [])
    sections: dict[str, Any] = {}
    for section, cls in SECTION_CLASSES.items():
        values = {}
        for f in dataclasses.fields(cls):
            item = raw.get((section, f.name))
            if item is None:
                continue
            try:
                converted = _convert(item.value, _TYPE_HINTS[section][f.name])
                _check_limits(converted, f.metadata["spec"])
            except _InvalidValue as problem:
                errors.append(f"{item.source}: {section}.{f.name} {problem}")
                continue
            values[f.name] = converted
        sections[section] = cls(**values)
    if errors:
        raise ConfigError("\n".join(errors))

    provenance = {f"{section}.{key}": item.source for (section, key), item in raw.items()}
    config = RunConfig(
        **sections, source=source_path, provenance=provenance, sections_present=frozenset(present)
    )
    if config.model.intermediate_size is None:
        config.model.intermediate_size = 4 * config.model.hidden_size
    if config.training.checkpoint_output_dir is None:
        config.training.checkpoint_output_dir = f"output/{config.name}"

    errors = _consistency_errors(config)
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def _consistency_errors(config: RunConfig) -> list[str]:
    """Return the problems that involve more than one key, each naming the keys, their sources and a fix."""
    m, d, t, e = config.model, config.data, config.training, config.execution

    def source_of(key: str) -> str:
        return config.provenance.get(f"{KEY_SECTIONS[key]}.{key}", BUILT_IN_DEFAULT)

    def at(key: str) -> str:
        return f"{KEY_SECTIONS[key]}.{key} ({source_of(key)})"

    errors = []
    if m.hidden_size % m.num_attention_heads:
        errors.append(
            f"{at('hidden_size')} = {m.hidden_size} is not divisible by {at('num_attention_heads')} = "
            f"{m.num_attention_heads}; choose a head count that divides the hidden size"
        )
    if m.model_type == "groupbert":
        if m.hidden_size % m.ffn_groups:
            errors.append(
                f"{at('hidden_size')} = {m.hidden_size} is not divisible by {at('ffn_groups')} = {m.ffn_groups}; "
                f"the grouped FFN maps each group to hidden_size / ffn_groups features, so pick a divisor"
            )
        if m.intermediate_size % m.ffn_groups:
            errors.append(
                f"{at('intermediate_size')} = {m.intermediate_size} is not divisible by {at('ffn_groups')} = "
                f"{m.ffn_groups}; pick an ffn_groups that divides both sizes"
            )
        if m.hidden_size % m.conv_group_size:
            errors.append(
                f"{at('hidden_size')} = {m.hidden_size} is not divisible by {at('conv_group_size')} = "
                f"{m.conv_group_size}; the convolution needs a whole number of channel groups"
            )
        if m.conv_kernel_size % 2 == 0:
            errors.append(
                f"{at('conv_kernel_size')} = {m.conv_kernel_size} must be odd, so that equal zero padding on "
                f"both sides keeps each output aligned with its token; use {m.conv_kernel_size + 1}"
            )

    if d.sequence_length > m.max_position_embeddings:
        errors.append(
            f"{at('sequence_length')} = {d.sequence_length} exceeds {at('max_position_embeddings')} = "
            f"{m.max_position_embeddings}; shorten the sequences or raise max_position_embeddings"
        )
    if d.mask_tokens > d.sequence_length:
        errors.append(
            f"{at('mask_tokens')} = {d.mask_tokens} exceeds {at('sequence_length')} = {d.sequence_length}; "
            f"use at most the sequence length (usual: about 15%, for example 20 for 128)"
        )
    if d.next_sentence_prediction and m.type_vocab_size < 2:
        errors.append(
            f"{at('next_sentence_prediction')} needs two token types but {at('type_vocab_size')} = "
            f"{m.type_vocab_size}; set type_vocab_size: 2 or next_sentence_prediction: false"
        )
    if d.packed_data and d.max_sequences_per_pack < 2:
        errors.append(
            f"{at('packed_data')} is true but {at('max_sequences_per_pack')} = {d.max_sequences_per_pack} "
            f"packs nothing; set max_sequences_per_pack to 2 or more, or packed_data: false"
        )
    if t.validation_batches > 0 and d.validation_fraction == 0 and d.dataset == "pretraining":
        errors.append(
            f"{at('validation_batches')} = {t.validation_batches} needs held-out documents but "
            f"{at('validation_fraction')} is 0; set validation_fraction (for example 0.02) or validation_batches: 0"
        )

    if t.auto_loss_scaling and t.min_loss_scale > t.loss_scaling:
        errors.append(
            f"{at('min_loss_scale')} = {t.min_loss_scale:g} is above the starting {at('loss_scaling')} = "
            f"{t.loss_scaling:g}; lower min_loss_scale or raise loss_scaling"
        )
    if t.training_steps % e.device_iterations:
        errors.append(
            f"{at('training_steps')} = {t.training_steps} is not a multiple of {at('device_iterations')} = "
            f"{e.device_iterations}, and each IPU call runs device_iterations steps; make training_steps a "
            f"multiple or set device_iterations: 1"
        )

    try:
        expand_layers_per_ipu(e.layers_per_ipu, m.num_hidden_layers, e.ipus_per_replica)
    except ValueError as problem:
        errors.append(
            f"{at('layers_per_ipu')}: {problem} (num_hidden_layers from {source_of('num_hidden_layers')}, "
            f"ipus_per_replica from {source_of('ipus_per_replica')})"
        )
    try:
        expand_matmul_proportion(e.matmul_proportion, e.ipus_per_replica)
    except ValueError as problem:
        errors.append(f"{at('matmul_proportion')}: {problem} (ipus_per_replica from {source_of('ipus_per_replica')})")
    if m.vocab_size % e.embedding_serialization_factor:
        errors.append(
            f"{at('vocab_size')} = {m.vocab_size} is not divisible by {at('embedding_serialization_factor')} = "
            f"{e.embedding_serialization_factor}; the embedding matmul is split into equal slices of the "
            f"vocabulary, so use a divisor of vocab_size"
        )

    if "squad" in config.sections_present:
        errors += _squad_errors(config, at)
    return errors


def _squad_errors(config: RunConfig, at: Any) -> list[str]:
    d, s = config.data, config.squad
    errors = []
    # [CLS] question [SEP] context [SEP]: three special tokens besides question and context.
    context_tokens = d.sequence_length - s.max_query_length - 3
    if context_tokens < 1:
        errors.append(
            f"{at('max_query_length')} = {s.max_query_length} leaves no room for context in "
            f"{at('sequence_length')} = {d.sequence_length}; lower max_query_length"
        )
    steps_origin = config.provenance.get("training.training_steps")
    if s.epochs is not None and steps_origin is not None and not steps_origin.startswith(DERIVED_PREFIX):
        errors.append(
            f"both {at('epochs')} and {at('training_steps')} are set, but epochs determines the steps; "
            f"remove one, or pass --squad.epochs null to use training_steps"
        )
    if s.train_file is None and s.predict_file is None:
        errors.append(
            f"{at('train_file')} and {at('predict_file')} are both null; set at least one SQuAD JSON file"
        )
    return errors


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_config(name_or_path: str, overrides: Optional[list[str]] = None) -> RunConfig:
    """Load, merge (`extends:`), override and validate a run configuration.

    `name_or_path` is a YAML path or a name under `configs/` (`.yaml` may be omitted).
    `overrides` are command-line tokens such as ["--training.training_steps", "50",
    "--layers-per-ipu", "0", "4", "4", "4"]. Raises ConfigError.
    """
    path = resolve_config_path(name_or_path)
    raw: dict[tuple[str, str], _RawValue] = {}
    errors: list[str] = []
    present: set[str] = set()
    for file_path, data in _read_chain(path):
        _collect_file_values(file_path, data, raw, errors, present)
    _collect_overrides(list(overrides or []), raw)
    present.update(section for section, _ in raw)
    return _build(raw, present, source_path=path.resolve(), errors=errors)


def format_help(description: str, prog: str, config: Optional[RunConfig] = None) -> str:
    """Return the `--help` text: every key grouped by section, with type, unit, range and default."""
    lines = [
        f"usage: {prog} --config NAME [--section.key VALUE ...]",
        "",
        description,
        "",
        "options:",
        "  --config NAME         YAML file, or the name of a config in configs/: "
        + ", ".join(Path(n).stem for n in available_configs()),
        "  -h, --help            show this help and exit (with --config: also show that config's values)",
        "",
        "Every key below can be set in the YAML file or overridden as --section.key VALUE or --key-name VALUE.",
        "Lists take YAML flow text (\"[0,4,4,4]\") or space-separated values; booleans take true or false.",
    ]
    for section, cls in SECTION_CLASSES.items():
        lines += ["", f"{section}:  {cls.__doc__.splitlines()[0]}"]
        if section == "model":
            lines.append("  (keys marked GroupBERT only are accepted and ignored when model_type is bert)")
        for f in dataclasses.fields(cls):
            spec: KeySpec = f.metadata["spec"]
            sectioned, flat = option_names(section, f.name)
            details = [describe_type(_TYPE_HINTS[section][f.name])]
            if spec.unit:
                details.append(spec.unit)
            limits = describe_limits(spec)
            if limits:
                details.append(limits)
            details.append(f"default: {_format_value(key_default(section, f.name))}")
            if config is not None and f"{section}.{f.name}" in config.provenance:
                details.append(f"{config.name}: {_format_value(getattr(getattr(config, section), f.name))}")
            note = " [GroupBERT only]" if spec.groupbert_only else ""
            lines.append(f"  {sectioned}, {flat}")
            lines.append(f"      {spec.doc}{note} ({'; '.join(details)})")
    return "\n".join(lines) + "\n"


def parse_args(
    argv: Optional[list[str]] = None, *, description: str, exit_on_error: bool = True
) -> RunConfig:
    """Parse `--config NAME` plus key overrides into a RunConfig; handle `--help`.

    `--help` prints the key reference and exits with status 0. An invalid configuration prints
    `error: ...` and exits with status 2 (as argparse does), or raises ConfigError when
    `exit_on_error` is false.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "run"
    try:
        config_name, overrides, wants_help = _split_arguments(argv)
        if wants_help:
            config = load_config(config_name, overrides) if config_name else None
            sys.stdout.write(format_help(description, prog, config))
            raise SystemExit(0)
        if config_name is None:
            names = ", ".join(Path(n).stem for n in available_configs())
            raise ConfigError(f"command line: --config is required; pass a YAML path or one of: {names}")
        return load_config(config_name, overrides)
    except ConfigError as error:
        if not exit_on_error:
            raise
        sys.stderr.write(f"usage: {prog} --config NAME [--section.key VALUE ...] (see --help)\n")
        sys.stderr.write(f"{prog}: error: {error}\n")
        raise SystemExit(2) from None


def _split_arguments(argv: list[str]) -> tuple[Optional[str], list[str], bool]:
    """Separate `--config`, `--help` and the override tokens."""
    config_name = None
    wants_help = False
    overrides: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in ("-h", "--help"):
            wants_help = True
        elif token == "--config":
            if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
                raise ConfigError("command line: --config needs a value (a YAML path or a config name)")
            config_name = argv[index + 1]
            index += 1
        elif token.startswith("--config="):
            config_name = token.partition("=")[2]
        else:
            overrides.append(token)
        index += 1
    return config_name, overrides, wants_help
