"""The placement plan: which IPU of a replica runs each part of the model.

The plan is a pure function of the model's shape and `execution.layers_per_ipu`, so it can be
tested and logged without PopTorch. `parallelize.parallelize` applies it with `poptorch.BeginBlock`.

Layout, following Graphcore's BERT applications:
- IPU 0 runs the embeddings and, for pre-training, the masked-LM head, whose decoder is tied to
  the word embeddings (one copy of the [V, H] table), plus the pooler and next-sentence head;
- the encoder layers follow `layers_per_ipu`; GroupBERT's final LayerNorm stays with the last layer;
- the question-answering head sits on the last IPU, next to the last layer.

Consecutive modules on one IPU share one PopTorch block, which `AutoStage.AutoIncrement` turns
into one pipeline stage. A pre-training pipeline over N > 1 IPUs has N + 1 stages, because it
returns to IPU 0 for the heads; a question-answering pipeline has N.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig, expand_layers_per_ipu

TASKS = ("pretraining", "question_answering")


@dataclass(frozen=True)
class Placement:
    """One module of the model and where it runs."""

    module: str  # dotted path from the task model, e.g. "bert.encoder.layer.3"
    ipu: int  # IPU index within a replica (0 .. ipus_per_replica - 1)
    block: str  # PopTorch block id; every module of a block belongs to one pipeline stage


def layer_ipus(layers_per_ipu: int | list[int], num_layers: int, ipus_per_replica: int) -> list[int]:
    """Return the IPU of each encoder layer, from `layers_per_ipu` as a scalar, a list or with -1 entries.

    Raises ValueError stating both counts when the entries cannot sum to `num_layers` or the list
    length differs from `ipus_per_replica`. Also raises when an IPU other than IPU 0 gets no
    layer, because it would sit idle in the pipeline (IPU 0 has the embeddings).
    """
    counts = expand_layers_per_ipu(layers_per_ipu, num_layers, ipus_per_replica)
    idle = [ipu for ipu, count in enumerate(counts) if ipu > 0 and count == 0]
    if idle:
        raise ValueError(
            f"layers_per_ipu {layers_per_ipu} expands to {counts}, which leaves IPU(s) {idle} without an encoder "
            f"layer; give every IPU after IPU 0 at least one of the {num_layers} layers, or lower ipus_per_replica"
        )
    return [ipu for ipu, count in enumerate(counts) for _ in range(count)]


def plan_placement(
    task: str, model_type: str, num_layers: int, layers_per_ipu: int | list[int], ipus_per_replica: int
) -> list[Placement]:
    """Return the placements of `task`'s model in execution order (the order of pipeline stages)."""
    if task not in TASKS:
        raise ValueError(f"no IPU placement for task {task!r}; tasks: {', '.join(TASKS)}")
    if model_type not in ("groupbert", "bert"):
        raise ValueError(f"model_type must be groupbert or bert, got {model_type!r}")
    ipu_of_layer = layer_ipus(layers_per_ipu, num_layers, ipus_per_replica)
    last_ipu = ipu_of_layer[-1]

    modules: list[tuple[str, int]] = [("bert.embeddings", 0)]
    modules += [(f"bert.encoder.layer.{index}", ipu) for index, ipu in enumerate(ipu_of_layer)]
    if model_type == "groupbert":
        # Pre-norm layers leave the residual stream unnormalised; its final LayerNorm runs beside the last layer.
        modules.append(("bert.encoder.LayerNorm", last_ipu))
    if task == "pretraining":
        # The MLM head contains the decoder tied to the word embeddings, so it shares IPU 0 with them.
        # `cls` itself is never called (the model calls its two heads directly), so each head is annotated.
        modules += [("cls.predictions", 0), ("bert.pooler", 0), ("cls.seq_relationship", 0)]
    else:
        modules.append(("qa_outputs", last_ipu))

    plan: list[Placement] = []
    stage = -1
    for module, ipu in modules:
        if not plan or plan[-1].ipu != ipu:
            stage += 1
        plan.append(Placement(module=module, ipu=ipu, block=f"Stage{stage}@IPU{ipu}"))
    return plan


def placement_plan(config: RunConfig, task: str) -> list[Placement]:
    """Return the placement plan for `config`'s model and execution sections."""
    execution = config.execution
    return plan_placement(
        task, config.model.model_type, config.model.num_hidden_layers,
        execution.layers_per_ipu, execution.ipus_per_replica,
    )


def pipeline_stages(plan: list[Placement]) -> int:
    """Return the number of pipeline stages of a plan (distinct blocks)."""
    return len({placement.block for placement in plan})


def format_placement_table(plan: list[Placement]) -> str:
    """Return the plan as a table with one row per module, for the start-of-run log."""
    ipus = max(placement.ipu for placement in plan) + 1
    width = max(len("module"), *(len(placement.module) for placement in plan))
    lines = [
        f"IPU placement per replica: {ipus} IPU(s), {pipeline_stages(plan)} pipeline stage(s)",
        f"  {'module':<{width}}  IPU  block",
    ]
    lines += [f"  {placement.module:<{width}}  {placement.ipu:>3}  {placement.block}" for placement in plan]
    return "\n".join(lines)
