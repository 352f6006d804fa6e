"""GroupBERT and BERT models, their configs, and parameter and FLOP counts.

Importing this package registers GroupBERT with the `transformers` Auto classes, so
`AutoConfig.for_model("groupbert", ...)`, `AutoModel`, `AutoModelForPreTraining` and
`AutoModelForQuestionAnswering` build and load GroupBERT models.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    BertConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from .bert import BertForPreTraining, BertForQuestionAnswering, BertModel
from .configuration import MODEL_SIZES, GroupBertConfig, bert_config, groupbert_config, validate_model_config
from .flops import FlopCount, count_parameters, pretraining_flops, question_answering_flops
from .groupbert import GroupBertForPreTraining, GroupBertForQuestionAnswering, GroupBertModel
from .layers import SelfAttention
from .tasks import PreTrainingOutput

logger = logging.getLogger(__name__)

AutoConfig.register("groupbert", GroupBertConfig, exist_ok=True)
AutoModel.register(GroupBertConfig, GroupBertModel, exist_ok=True)
AutoModelForPreTraining.register(GroupBertConfig, GroupBertForPreTraining, exist_ok=True)
AutoModelForQuestionAnswering.register(GroupBertConfig, GroupBertForQuestionAnswering, exist_ok=True)

MODEL_TYPES = ("groupbert", "bert")
TASKS = ("base", "pretraining", "question_answering")

_MODEL_CLASSES: dict[tuple[str, str], type[PreTrainedModel]] = {
    ("groupbert", "base"): GroupBertModel,
    ("groupbert", "pretraining"): GroupBertForPreTraining,
    ("groupbert", "question_answering"): GroupBertForQuestionAnswering,
    ("bert", "base"): BertModel,
    ("bert", "pretraining"): BertForPreTraining,
    ("bert", "question_answering"): BertForQuestionAnswering,
}


def model_config_from_dict(keys: dict) -> PretrainedConfig:
    """Build a `GroupBertConfig` or `BertConfig` from a dict with a `model_type` key."""
    keys = dict(keys)
    model_type = keys.pop("model_type", None)
    if model_type == "groupbert":
        return GroupBertConfig(**keys)
    if model_type == "bert":
        keys.setdefault("intermediate_size", 4 * keys.get("hidden_size", 768))
        for key in ("ffn_groups", "conv_kernel_size", "conv_group_size"):
            keys.pop(key, None)
        config = BertConfig(**keys)
        validate_model_config(config)
        return config
    raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")


def model_class(model_type: str, task: str) -> type[PreTrainedModel]:
    """Return the model class for a model type ("groupbert" or "bert") and a task (base, pretraining, question_answering)."""
    if (model_type, task) not in _MODEL_CLASSES:
        raise ValueError(
            f"no model for model_type {model_type!r} and task {task!r}; "
            f"model types: {', '.join(MODEL_TYPES)}; tasks: {', '.join(TASKS)}"
        )
    return _MODEL_CLASSES[(model_type, task)]


def build_model(config: PretrainedConfig, task: str) -> PreTrainedModel:
    """Build a freshly initialised model for `task` from a GroupBERT or BERT config."""
    return model_class(config.model_type, task)(config)


def load_pretrained(path: str | Path, task: str, **config_overrides) -> PreTrainedModel:
    """Load a checkpoint folder (ours, or a Hugging Face BERT) into the model for `task`.

    `config_overrides` replace values of the checkpoint's config (for example dropout). Weights the checkpoint lacks (for example a question-answering head, or the MLM head of a
    `BertModel` checkpoint) are freshly initialised and listed in the log.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: a checkpoint folder needs config.json and model.safetensors; "
            f"point to a step_<N> folder of a run or to a Hugging Face model folder"
        )
    config = AutoConfig.from_pretrained(path)
    try:
        model, info = model_class(config.model_type, task).from_pretrained(
            path, output_loading_info=True, **config_overrides
        )
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"could not load the weights in {path} ({type(error).__name__}: {error}); the file may be cut short "
            f"or corrupted, so point to another checkpoint"
        ) from error
    if info["missing_keys"]:
        logger.info("Initialised %d tensors not in %s: %s", len(info["missing_keys"]), path, sorted(info["missing_keys"]))
    return model


def set_attention_backend(model: PreTrainedModel, backend: str) -> None:
    """Select the attention implementation of every layer: "sdpa" (host) or "matmul" (IPU)."""
    if backend not in ("sdpa", "matmul"):
        raise ValueError(f"attention backend must be 'sdpa' or 'matmul', got {backend!r}")
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.use_sdpa = backend == "sdpa"


__all__ = [
    "MODEL_SIZES",
    "MODEL_TYPES",
    "TASKS",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertModel",
    "FlopCount",
    "GroupBertConfig",
    "GroupBertForPreTraining",
    "GroupBertForQuestionAnswering",
    "GroupBertModel",
    "PreTrainingOutput",
    "bert_config",
    "build_model",
    "count_parameters",
    "groupbert_config",
    "load_pretrained",
    "model_class",
    "model_config_from_dict",
    "pretraining_flops",
    "question_answering_flops",
    "set_attention_backend",
]
