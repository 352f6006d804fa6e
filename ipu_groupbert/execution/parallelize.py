"""Apply the IPU placement plan to an unmodified model, and remove it again.

`parallelize` annotates the model in place: `poptorch.BeginBlock` on each planned module, a
recomputation checkpoint after each encoder layer, serialized embedding and MLM decoder matmuls,
and the explicit matmul attention that PopTorch compiles. `deparallelize` undoes every change,
so the state dict (names, values and tied weights) is the same before, during and after.

Outside IPU compilation PopTorch's annotations are inert: BeginBlock only registers a forward
pre-hook, `recomputationCheckpoint` returns its input and `serializedMatMul` computes a plain
matmul, so an annotated model still runs as ordinary PyTorch on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config import RunConfig
from ..models import set_attention_backend
from ..models.layers import SelfAttention
from .placement import Placement, format_placement_table, plan_placement
from .sdk import import_poptorch

logger = logging.getLogger(__name__)

_RECORD_ATTRIBUTE = "_ipu_parallelization"


class SerializedEmbedding(nn.Embedding):
    """`nn.Embedding` whose lookup runs as `factor` lookups into equal slices of the vocabulary.

    It shares the weight Parameter of the embedding it replaces, so weight tying and the state dict
    are unchanged. Each token falls in exactly one slice and the other slices add exact zeros, so
    the output equals the plain lookup. On IPUs the embedding gradient (a scatter-add into the
    [V, H] table) is then built slice by slice, which lowers its peak memory.
    """

    factor: int

    @classmethod
    def wrapping(cls, embedding: nn.Embedding, factor: int) -> "SerializedEmbedding":
        if embedding.num_embeddings % factor:
            raise ValueError(
                f"embedding_serialization_factor {factor} does not divide the vocabulary of {embedding.num_embeddings} "
                f"tokens; use a divisor of vocab_size"
            )
        if embedding.max_norm is not None or embedding.sparse or embedding.scale_grad_by_freq:
            raise NotImplementedError(
                "serializing an embedding with max_norm, sparse or scale_grad_by_freq is not supported; "
                "set execution.embedding_serialization_factor to 1"
            )
        # Built on the meta device, then given the existing Parameter: no second [V, H] table is allocated.
        serialized = cls(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx,
                         device="meta")
        serialized.weight = embedding.weight
        serialized.factor = factor
        return serialized

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        slice_size = self.num_embeddings // self.factor
        output = None
        for index in range(self.factor):
            start = index * slice_size
            local_ids = input_ids - start
            inside = (local_ids >= 0) & (local_ids < slice_size)
            local_ids = torch.where(inside, local_ids, torch.zeros_like(local_ids))
            padding_idx = None
            if self.padding_idx is not None and start <= self.padding_idx < start + slice_size:
                padding_idx = self.padding_idx - start
            part = F.embedding(local_ids, self.weight[start:start + slice_size], padding_idx)
            part = part * inside.unsqueeze(-1).to(part.dtype)
            output = part if output is None else output + part
        return output

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}"


class SerializedLinear(nn.Linear):
    """`nn.Linear` computed with `poptorch.serializedMatMul`, split over its output features.

    For the MLM decoder the output features are the vocabulary, so the [tokens, V] logits and
    their gradient are produced in `factor` pieces. It shares the Parameters of the layer it
    replaces, which keeps the decoder tied to the word embeddings.
    """

    factor: int

    @classmethod
    def wrapping(cls, linear: nn.Linear, factor: int) -> "SerializedLinear":
        if linear.out_features % factor:
            raise ValueError(
                f"embedding_serialization_factor {factor} does not divide the {linear.out_features} output features "
                f"of the MLM decoder; use a divisor of vocab_size"
            )
        serialized = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        serialized.weight = linear.weight
        if linear.bias is not None:
            serialized.bias = linear.bias
        serialized.factor = factor
        return serialized

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        poptorch = import_poptorch()
        output = poptorch.serializedMatMul(
            hidden_states, self.weight.t(), poptorch.MatMulSerializationMode.OutputChannels, self.factor
        )
        if self.bias is not None:
            output = output + self.bias
        return output

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}"


@dataclass
class _Parallelization:
    """Record of the changes `parallelize` made, from which `deparallelize` restores the model exactly."""

    plan: list[Placement]
    hooks: list[RemovableHandle] = field(default_factory=list)
    replaced_modules: list[tuple[str, nn.Module]] = field(default_factory=list)  # (path, original module)
    attention_backends: list[tuple[SelfAttention, bool]] = field(default_factory=list)  # (module, use_sdpa)


def parallelize(model: nn.Module, config: RunConfig, task: str) -> list[Placement]:
    """Annotate `model` in place for pipelined execution on IPUs; return the plan that was applied.

    `task` is "pretraining" or "question_answering". The architecture comes from `model.config`,
    so a checkpoint with another layer count gets a matching plan (with -1 entries in
    layers_per_ipu) or a clear error. Logs the module-to-IPU table.
    """
    poptorch = import_poptorch()
    if is_parallelized(model):
        raise RuntimeError("the model is already parallelized for IPUs; call deparallelize(model) first")
    execution = config.execution
    plan = plan_placement(
        task, model.config.model_type, model.config.num_hidden_layers,
        execution.layers_per_ipu, execution.ipus_per_replica,
    )
    modules = {placement.module: _submodule(model, placement.module) for placement in plan}
    record = _Parallelization(plan=plan)
    setattr(model, _RECORD_ATTRIBUTE, record)
    try:
        _annotate(model, record, modules, config, task, poptorch)
    except BaseException:
        # Leave no half-annotated model behind.
        deparallelize(model)
        raise
    logger.info("%s", format_placement_table(plan))
    return plan


def _annotate(model, record: _Parallelization, modules: dict, config: RunConfig, task: str, poptorch) -> None:
    execution = config.execution

    # Serialize the [V, H] embedding lookup and the tied decoder matmul over the vocabulary.
    factor = execution.embedding_serialization_factor
    if factor > 1:
        _replace(model, record, "bert.embeddings.word_embeddings", SerializedEmbedding.wrapping, factor)
        if task == "pretraining":
            _replace(model, record, "cls.predictions.decoder", SerializedLinear.wrapping, factor)

    # PopTorch compiles the explicit matmul-softmax-matmul attention, not SDPA.
    record.attention_backends = [(m, m.use_sdpa) for m in model.modules() if isinstance(m, SelfAttention)]
    set_attention_backend(model, "matmul")

    # Keep each layer's output for the backward pass; recomputation then replays one layer at most.
    if execution.recompute_checkpoint_every_layer:
        for index in range(model.config.num_hidden_layers):
            layer = _submodule(model, f"bert.encoder.layer.{index}")
            record.hooks.append(layer.register_forward_hook(_checkpoint_layer_output))

    # BeginBlock registers a forward pre-hook on the module itself (PopTorch 3.x) and returns it.
    for placement in record.plan:
        poptorch.BeginBlock(modules[placement.module], placement.block, ipu_id=placement.ipu)


def deparallelize(model: nn.Module) -> None:
    """Remove everything `parallelize` added, leaving the plain model (for checkpoints and host runs)."""
    record = getattr(model, _RECORD_ATTRIBUTE, None)
    if record is None:
        raise RuntimeError("the model is not parallelized for IPUs, so there is nothing to remove")
    poptorch = import_poptorch()
    poptorch.removeBlocks(model)
    for hook in record.hooks:
        hook.remove()
    for path, original in reversed(record.replaced_modules):
        _set_submodule(model, path, original)
    for attention, use_sdpa in record.attention_backends:
        attention.use_sdpa = use_sdpa
    delattr(model, _RECORD_ATTRIBUTE)


def is_parallelized(model: nn.Module) -> bool:
    return getattr(model, _RECORD_ATTRIBUTE, None) is not None


def _checkpoint_layer_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return import_poptorch().recomputationCheckpoint(output)


def _replace(model: nn.Module, record: _Parallelization, path: str, wrap, factor: int) -> None:
    original = _submodule(model, path)
    _set_submodule(model, path, wrap(original, factor))
    record.replaced_modules.append((path, original))


def _submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"the model has no module {path!r}; IPU placement expects the GroupBERT or BERT task models of "
            f"ipu_groupbert.models ({type(model).__name__} given)"
        ) from None


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)
