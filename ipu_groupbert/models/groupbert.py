"""GroupBERT (Chelombiev et al. 2021, arXiv 2106.05822): BERT with grouped, convolution-augmented layers.

How a GroupBERT layer differs from a BERT layer:
- four residual modules instead of two, in this order: convolution, grouped feed-forward,
  multi-head attention, a second grouped feed-forward with its own weights;
- every module is pre-norm: `x + Dropout(Module(LayerNorm(x)))`, with one final LayerNorm after
  the last layer and none after a residual add;
- the feed-forward down-projection is grouped (block-diagonal, G groups) and followed by a dense
  H x H projection that mixes the groups, which cuts its weights from 8H^2 to 6H^2 at G = 4;
- the convolution module (gated linear unit, grouped 1-D convolution along the sequence,
  LayerNorm, SiLU, dense projection) adds local context.

Parameter names follow Graphcore's PyTorch port (optimum-graphcore), so its published
`groupbert` checkpoints load without a mapping. Shapes use the legend of `layers.py`, plus
F intermediate size, G feed-forward groups, K convolution kernel and C convolution channels per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration import GroupBertConfig
from .layers import Embeddings, Pooler, SelfAttention, attention_mask_from_groups, token_groups
from .tasks import InitMixin, PreTrainingMixin, QuestionAnsweringMixin


class GroupBertConvolution(nn.Module):
    """Convolution module: GLU, grouped 1-D convolution over the sequence, LayerNorm, SiLU, dense projection.

    Padding positions are zeroed before the convolution, so a padded sequence gets what it gets
    alone. In packed rows (`sequence_ids` given) each kernel tap that would reach a token of another
    sequence is dropped as well, so neighbouring sequences never mix.
    """

    def __init__(self, config: GroupBertConfig):
        super().__init__()
        hidden_size = config.hidden_size
        self.prenorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.glu = nn.Linear(hidden_size, 2 * hidden_size)
        self.groupconv = nn.Conv1d(
            hidden_size,
            hidden_size,
            config.conv_kernel_size,
            padding=config.conv_kernel_size // 2,
            groups=hidden_size // config.conv_group_size,
        )
        self.conv_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.output_projection = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sequence_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        gates, values = self.glu(self.prenorm(hidden_states)).chunk(2, dim=-1)  # [B, S, H] each
        hidden_states = values * torch.sigmoid(gates)
        if attention_mask is not None:
            hidden_states = hidden_states * attention_mask.unsqueeze(-1).to(hidden_states.dtype)

        if sequence_ids is None:
            hidden_states = self.groupconv(hidden_states.transpose(1, 2)).transpose(1, 2)
        else:
            hidden_states = self._convolve_within_sequences(hidden_states, sequence_ids)

        return self.output_projection(F.silu(self.conv_norm(hidden_states)))

    def _convolve_within_sequences(self, hidden_states: torch.Tensor, sequence_ids: torch.Tensor) -> torch.Tensor:
        """Apply `groupconv` with every tap that crosses into another sequence (or past the row) zeroed."""
        batch_size, sequence_length, hidden_size = hidden_states.shape
        kernel_size = self.groupconv.kernel_size[0]
        half = kernel_size // 2
        groups = self.groupconv.groups
        channels = hidden_size // groups

        # windows[b, s, h, k] = hidden_states[b, s + k - half, h], zero outside the row.
        windows = F.pad(hidden_states, (0, 0, half, half)).unfold(1, kernel_size, 1)  # [B, S, H, K]
        # -1 never equals a real id or padding (0), so taps past either end of the row are dropped too.
        neighbour_ids = F.pad(sequence_ids, (half, half), value=-1).unfold(1, kernel_size, 1)  # [B, S, K]
        same_sequence = (neighbour_ids == sequence_ids.unsqueeze(-1)).to(hidden_states.dtype)
        windows = windows * same_sequence.unsqueeze(2)

        windows = windows.reshape(batch_size, sequence_length, groups, channels, kernel_size)
        weight = self.groupconv.weight.view(groups, channels, channels, kernel_size)  # [G, C_out, C_in, K]
        output = torch.einsum("bsgik,goik->bsgo", windows, weight)
        return output.reshape(batch_size, sequence_length, hidden_size) + self.groupconv.bias


class GroupBertIntermediate(nn.Module):
    """First half of a grouped feed-forward module: pre-norm LayerNorm, dense H -> F, GELU."""

    def __init__(self, config: GroupBertConfig):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.LayerNorm(hidden_states)))  # [B, S, F]


class GroupBertOutput(nn.Module):
    """Second half of a grouped feed-forward module: grouped F -> H projection, then a dense H -> H that mixes groups.

    The grouped projection keeps Graphcore's parameter layout, a `Conv1d(F, H, 1, groups=G)`: group g
    maps the contiguous input slice [g F/G, (g+1) F/G) to the output slice [g H/G, (g+1) H/G). It is
    computed as a batched matmul over groups, which is the same arithmetic without a convolution kernel.
    """

    def __init__(self, config: GroupBertConfig):
        super().__init__()
        self.grouped_matmul = nn.Conv1d(config.intermediate_size, config.hidden_size, 1, groups=config.ffn_groups)
        self.dense_output_projection = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, intermediate: torch.Tensor) -> torch.Tensor:
        batch_size, sequence_length, intermediate_size = intermediate.shape
        groups = self.grouped_matmul.groups
        hidden_size = self.grouped_matmul.out_channels
        weight = self.grouped_matmul.weight.view(groups, hidden_size // groups, intermediate_size // groups)
        grouped = intermediate.view(batch_size, sequence_length, groups, intermediate_size // groups)
        hidden_states = torch.einsum("bsgi,goi->bsgo", grouped, weight).reshape(batch_size, sequence_length, hidden_size)
        return self.dense_output_projection(hidden_states + self.grouped_matmul.bias)


class GroupBertAttentionOutput(nn.Module):
    def __init__(self, config: GroupBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.dense(context)


class GroupBertAttention(nn.Module):
    """Pre-norm multi-head self-attention: LayerNorm, BERT's attention, output projection."""

    def __init__(self, config: GroupBertConfig):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = SelfAttention(config)
        self.output = GroupBertAttentionOutput(config)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(self.LayerNorm(hidden_states), mask))


class GroupBertLayer(nn.Module):
    """Convolution, grouped FFN, attention, grouped FFN; each as `x + Dropout(Module(LayerNorm(x)))`."""

    def __init__(self, config: GroupBertConfig):
        super().__init__()
        self.convolution = GroupBertConvolution(config)
        self.intermediate_first = GroupBertIntermediate(config)
        self.output_first = GroupBertOutput(config)
        self.attention = GroupBertAttention(config)
        self.intermediate_second = GroupBertIntermediate(config)
        self.output_second = GroupBertOutput(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sequence_ids: torch.Tensor | None,
        attention_bias_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.dropout(self.convolution(hidden_states, attention_mask, sequence_ids))
        hidden_states = hidden_states + self.dropout(self.output_first(self.intermediate_first(hidden_states)))
        hidden_states = hidden_states + self.dropout(self.attention(hidden_states, attention_bias_mask))
        hidden_states = hidden_states + self.dropout(self.output_second(self.intermediate_second(hidden_states)))
        return hidden_states


class GroupBertEncoder(nn.Module):
    def __init__(self, config: GroupBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(GroupBertLayer(config) for _ in range(config.num_hidden_layers))
        # Pre-norm layers leave the residual stream unnormalised, so one LayerNorm closes the stack.
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, attention_mask, sequence_ids, attention_bias_mask) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask, sequence_ids, attention_bias_mask)
        return self.LayerNorm(hidden_states)


class GroupBertPreTrainedModel(InitMixin, PreTrainedModel):
    config_class = GroupBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["GroupBertLayer"]


class GroupBertModel(GroupBertPreTrainedModel):
    """The GroupBERT encoder: embeddings, layers, final LayerNorm and an optional pooler.

    Takes the padding and packing tensors described in `layers.py`. Returns Hugging Face's
    `BaseModelOutputWithPooling` (`last_hidden_state` [B, S, H], and `pooler_output` [B, H] of token 0,
    None without a pooler or with `output_pooled=False`).
    """

    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"^cls\.", r"qa_outputs"]

    def __init__(self, config: GroupBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.encoder = GroupBertEncoder(config)
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
        if attention_mask is None and sequence_ids is not None:
            attention_mask = (sequence_ids > 0).long()
        attention_bias_mask = attention_mask_from_groups(token_groups(attention_mask, sequence_ids))

        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids)
        hidden_states = self.encoder(hidden_states, attention_mask, sequence_ids, attention_bias_mask)
        pooled = self.pooler(hidden_states) if output_pooled and self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class GroupBertForPreTraining(PreTrainingMixin, GroupBertPreTrainedModel):
    base_model_class = GroupBertModel


class GroupBertForQuestionAnswering(QuestionAnsweringMixin, GroupBertPreTrainedModel):
    base_model_class = GroupBertModel
