"""The BERT baseline (Devlin et al. 2019): post-norm layers with Hugging Face's parameter names.

It uses `transformers.BertConfig` (model_type "bert") and the same embeddings, attention, heads,
padding and packing as GroupBERT, so the two compare on equal terms. The state dict matches
`transformers.BertModel`/`BertForPreTraining`, so their checkpoints load unchanged and ours load
into theirs. Shapes use the legend of `layers.py`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .layers import Embeddings, Pooler, SelfAttention, attention_mask_from_groups, token_groups
from .tasks import InitMixin, PreTrainingMixin, QuestionAnsweringMixin


class BertResidualOutput(nn.Module):
    """Dense projection, dropout, residual add, then LayerNorm (post-norm)."""

    def __init__(self, config: BertConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(hidden_states)))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden_states, mask), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states))  # [B, S, F]


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attention_output = self.attention(hidden_states, mask)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, mask)
        return hidden_states


class BertPreTrainedModel(InitMixin, PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["BertLayer"]


class BertModel(BertPreTrainedModel):
    """The BERT encoder, with the same inputs and output type as `GroupBertModel`."""

    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"^cls\.", r"qa_outputs"]

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = Pooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        output_pooled: bool = True,
    ) -> BaseModelOutputWithPooling:
        # Every BERT operation outside attention is per token, so only the attention mask
        # depends on padding and packing.
        attention_bias_mask = attention_mask_from_groups(token_groups(attention_mask, sequence_ids))
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids)
        hidden_states = self.encoder(hidden_states, attention_bias_mask)
        pooled = self.pooler(hidden_states) if output_pooled and self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class BertForPreTraining(PreTrainingMixin, BertPreTrainedModel):
    base_model_class = BertModel


class BertForQuestionAnswering(QuestionAnsweringMixin, BertPreTrainedModel):
    base_model_class = BertModel
