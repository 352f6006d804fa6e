"""Task heads shared by GroupBERT and BERT: pre-training (masked LM + next sentence) and question answering.

Each task class is a mixin combined with a model family's `PreTrainedModel` class, which sets
`base_model_class` (the encoder) and the config class. Shapes use the legend of `layers.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import QuestionAnsweringModelOutput
from transformers.utils import ModelOutput

from .layers import MaskedLMHead, PreTrainingHeads, gather_positions

try:
    # transformers 5: these initialisers skip tensors already loaded from a checkpoint.
    from transformers import initialization as init

    TRANSFORMERS_5 = True
except ImportError:
    # transformers 4 (the line that supports PopTorch's torch 2.0) marks loaded tensors itself.
    from torch.nn import init

    TRANSFORMERS_5 = False

IGNORE_INDEX = -100


class InitMixin:
    """Initialisation shared by both model families.

    Dense, convolution and embedding weights: normal with std `initializer_range`, truncated at two
    standard deviations (as in the original BERT code). Biases zero, LayerNorm weight 1 and bias 0.
    The `transformers.initialization` functions skip tensors already loaded from a checkpoint.
    """

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding)):
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)


@dataclass
class PreTrainingOutput(ModelOutput):
    """Output of the pre-training models.

    `loss` is this micro-batch's MLM loss (mean over its masked tokens) plus its NSP loss (mean over
    its labelled sequences). The sums and counts let a trainer normalise over a whole
    gradient-accumulation window instead, so the gradient does not depend on how a batch is split.
    Counts are int64 tensors; sums are fp32.
    """

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None  # [B, M, V] at the masked positions
    nsp_logits: torch.Tensor | None = None  # [B, P, 2]
    mlm_loss_sum: torch.Tensor | None = None
    mlm_count: torch.Tensor | None = None
    mlm_correct: torch.Tensor | None = None
    nsp_loss_sum: torch.Tensor | None = None
    nsp_count: torch.Tensor | None = None
    nsp_correct: torch.Tensor | None = None


def classification_statistics(logits: torch.Tensor, labels: torch.Tensor):
    """Return (loss sum, labelled count, correct count) of a cross-entropy over labels != -100."""
    labelled = labels != IGNORE_INDEX
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    correct = ((logits.argmax(dim=-1) == labels) & labelled).sum()
    return loss_sum, labelled.sum(), correct


class PreTrainingMixin:
    """Encoder + masked-LM head at the given masked positions + next-sentence head.

    The MLM head runs only at `masked_lm_positions` [B, M] (a fixed count per row, so shapes are
    static); slots labelled -100 carry no loss. The next-sentence head pools each sequence's [CLS]
    token at `next_sentence_positions` [B, P] (default: token 0 of each row).
    """

    base_model_class: type[PreTrainedModel]
    # transformers 5 maps each tied weight to its source; transformers 4 lists them and ties
    # the output embeddings to the input embeddings.
    _tied_weights_keys = (
        {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}
        if TRANSFORMERS_5 else ["cls.predictions.decoder.weight"]
    )
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"cls\.predictions\.decoder\.bias"]

    def __init__(self, config):
        super().__init__(config)
        self.bert = self.base_model_class(config, add_pooling_layer=True)
        self.cls = PreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        masked_lm_positions: torch.Tensor | None = None,
        masked_lm_labels: torch.Tensor | None = None,
        next_sentence_positions: torch.Tensor | None = None,
        next_sentence_labels: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        sequence_output = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            sequence_ids=sequence_ids,
            output_pooled=False,  # the next-sentence head pools at its own [CLS] positions below
        ).last_hidden_state

        if masked_lm_positions is not None:
            sequence_output_at_masks = gather_positions(sequence_output, masked_lm_positions)  # [B, M, H]
        else:
            sequence_output_at_masks = sequence_output  # [B, S, H]
        mlm_logits = self.cls.predictions(sequence_output_at_masks)

        if next_sentence_positions is None:
            next_sentence_positions = torch.zeros_like(input_ids[:, :1])
        pooled = self.bert.pooler(sequence_output, next_sentence_positions)  # [B, P, H]
        nsp_logits = self.cls.seq_relationship(pooled)  # [B, P, 2]

        output = PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits)
        losses = []
        if masked_lm_labels is not None:
            output.mlm_loss_sum, output.mlm_count, output.mlm_correct = classification_statistics(
                mlm_logits, masked_lm_labels
            )
            output.mlm_loss = output.mlm_loss_sum / output.mlm_count.clamp(min=1)
            losses.append(output.mlm_loss)
        if next_sentence_labels is not None:
            labels = next_sentence_labels.reshape(nsp_logits.shape[:2])
            output.nsp_loss_sum, output.nsp_count, output.nsp_correct = classification_statistics(nsp_logits, labels)
            output.nsp_loss = output.nsp_loss_sum / output.nsp_count.clamp(min=1)
            losses.append(output.nsp_loss)
        if losses:
            output.loss = sum(losses)
        return output


class QuestionAnsweringMixin:
    """Encoder + a linear layer giving start and end logits [B, S] (Hugging Face's `qa_outputs`).

    With `start_positions` and `end_positions` [B], the loss is the mean of the start and end
    cross-entropies over the batch. Positions must lie inside the sequence: they are not clamped, and
    `cross_entropy` raises on one that does not.
    """

    base_model_class: type[PreTrainedModel]
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"^cls\.", r"pooler"]

    def __init__(self, config):
        super().__init__(config)
        self.bert = self.base_model_class(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> QuestionAnsweringModelOutput:
        sequence_output = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            sequence_ids=sequence_ids,
        ).last_hidden_state
        start_logits, end_logits = self.qa_outputs(sequence_output).float().unbind(dim=-1)  # [B, S] each

        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)
