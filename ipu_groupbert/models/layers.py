"""Building blocks shared by the GroupBERT and BERT models.

Shapes: B batch, S sequence, H hidden, N heads, D head size (H / N), M masked-token slots per row,
P sequences per row (1 unless rows are packed), V vocabulary.

Padding and packing use two per-token tensors:
- `attention_mask` [B, S]: 1 for real tokens, 0 for padding (Hugging Face's convention).
- `sequence_ids` [B, S], packed rows only: 0 for padding, 1..P for the sequence a token belongs to.
A token attends only to tokens with the same id, so each sequence of a packed row is computed as if
it were alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


def token_groups(attention_mask: torch.Tensor | None, sequence_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Return per-token group ids [B, S]: tokens interact only within a group (0 is padding)."""
    if sequence_ids is not None:
        return sequence_ids
    return attention_mask


def attention_mask_from_groups(groups: torch.Tensor | None) -> torch.Tensor | None:
    """Build the boolean attention mask [B, 1, S, S]: True where query and key share a group.

    Padding queries attend to padding keys, so no row of the mask is empty and softmax stays finite;
    their outputs are never read.
    """
    if groups is None:
        return None
    return (groups[:, None, :, None] == groups[:, None, None, :])


class Embeddings(nn.Module):
    """BERT's embeddings: word + learned absolute position + token type, then LayerNorm and dropout."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sequence_length = input_ids.shape[1]
        if sequence_length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"input of {sequence_length} tokens is longer than max_position_embeddings "
                f"({self.position_embeddings.num_embeddings}); truncate the input or use a longer model"
            )
        if position_ids is None:
            position_ids = torch.arange(sequence_length, device=input_ids.device)[None, :]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention without the output projection (Hugging Face's `BertSelfAttention`).

    `use_sdpa` selects `torch.nn.functional.scaled_dot_product_attention` (the host default) or the
    explicit matmul-softmax-matmul form that PopTorch compiles for IPUs. Both compute the same values.
    """

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.use_sdpa = True

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch_size, sequence_length, hidden_size = hidden_states.shape

        def split_heads(projection: nn.Linear) -> torch.Tensor:
            # [B, S, H] -> [B, N, S, D]
            heads = projection(hidden_states).view(batch_size, sequence_length, self.num_heads, self.head_size)
            return heads.transpose(1, 2)

        query, key, value = split_heads(self.query), split_heads(self.key), split_heads(self.value)
        dropout_prob = self.dropout_prob if self.training else 0.0
        if self.use_sdpa:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_prob)
        else:
            scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_size)  # [B, N, S, S]
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = F.dropout(scores.softmax(dim=-1), p=dropout_prob)
            context = probs @ value
        return context.transpose(1, 2).reshape(batch_size, sequence_length, hidden_size)


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on each sequence's [CLS] token."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, cls_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Pool [B, S, H] at `cls_positions` [B, P] to [B, P, H]; without positions, pool token 0 to [B, H]."""
        if cls_positions is None:
            return torch.tanh(self.dense(hidden_states[:, 0]))
        return torch.tanh(self.dense(gather_positions(hidden_states, cls_positions)))


def gather_positions(hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Select [B, K, H] from [B, S, H] at `positions` [B, K]."""
    index = positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
    return torch.gather(hidden_states, 1, index)


class PredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.activation(self.dense(hidden_states)))


class MaskedLMHead(nn.Module):
    """Masked-LM head: transform, then the decoder tied to the word embeddings plus an output bias."""

    def __init__(self, config):
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states)) + self.bias


class PreTrainingHeads(nn.Module):
    """The masked-LM head (`predictions`) and the next-sentence head (`seq_relationship`), with Hugging Face's names."""

    def __init__(self, config):
        super().__init__()
        self.predictions = MaskedLMHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)
