"""Analytic parameter and FLOP counts for GroupBERT and BERT configurations.

FLOPs count each multiply-add as 2 operations and cover matrix multiplications and convolutions
only (embedding lookups, norms and activations are omitted, as in `torch.utils.flop_counter`).
Training FLOPs are 3x the forward FLOPs: the backward pass computes the gradients of both the
input and the weights of every matmul, 2x the forward work. Attention scores are counted for the
full S x S matrix that is computed, also in packed rows, and without recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig


def count_parameters(config: PretrainedConfig, *, pooler: bool = True, pretraining_heads: bool = True) -> int:
    """Count the trainable parameters of a model built from `config`.

    With `pretraining_heads`, the MLM head (transform, LayerNorm and output bias; its decoder is tied
    to the word embeddings) and the next-sentence classifier are included, as in `*ForPreTraining`.
    """
    hidden = config.hidden_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * hidden + 2 * hidden
    layers = config.num_hidden_layers * _layer_parameters(config)
    total = embeddings + layers
    if config.model_type == "groupbert":
        total += 2 * hidden  # final LayerNorm
    if pooler:
        total += hidden * hidden + hidden
    if pretraining_heads:
        total += hidden * hidden + hidden + 2 * hidden + config.vocab_size  # MLM transform, LayerNorm, bias
        total += 2 * hidden + 2  # next-sentence classifier
    return total


def _linear(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def _layer_parameters(config: PretrainedConfig) -> int:
    hidden, intermediate = config.hidden_size, config.intermediate_size
    layer_norm = 2 * hidden
    attention = 4 * _linear(hidden, hidden)
    if config.model_type != "groupbert":
        return attention + _linear(hidden, intermediate) + _linear(intermediate, hidden) + 2 * layer_norm

    grouped_ffn = (
        layer_norm
        + _linear(hidden, intermediate)
        + intermediate * hidden // config.ffn_groups + hidden
        + _linear(hidden, hidden)
    )
    convolution = (
        layer_norm
        + _linear(hidden, 2 * hidden)
        + hidden * config.conv_group_size * config.conv_kernel_size + hidden
        + layer_norm
        + _linear(hidden, hidden)
    )
    return convolution + 2 * grouped_ffn + layer_norm + attention


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one row of `sequence_length` tokens, and per token."""

    forward_per_row: float
    sequence_length: int

    @property
    def training_per_row(self) -> float:
        return 3 * self.forward_per_row

    @property
    def forward_per_token(self) -> float:
        return self.forward_per_row / self.sequence_length

    @property
    def training_per_token(self) -> float:
        return self.training_per_row / self.sequence_length


def pretraining_flops(
    config: PretrainedConfig,
    sequence_length: int,
    mask_tokens: int,
    *,
    next_sentence_prediction: bool = True,
    sequences_per_row: int = 1,
) -> FlopCount:
    """Count the FLOPs of the pre-training model on one row.

    The MLM head runs at `mask_tokens` slots per row (all of them, padded slots included, since the
    shape is static) and the next-sentence head at `sequences_per_row` [CLS] tokens.
    """
    hidden, vocab = config.hidden_size, config.vocab_size
    forward = config.num_hidden_layers * _layer_flops(config, sequence_length)
    forward += mask_tokens * (2 * hidden * hidden + 2 * hidden * vocab)
    if next_sentence_prediction:
        forward += sequences_per_row * (2 * hidden * hidden + 2 * hidden * 2)
    return FlopCount(forward_per_row=float(forward), sequence_length=sequence_length)


def question_answering_flops(config: PretrainedConfig, sequence_length: int) -> FlopCount:
    """Count the FLOPs of the question-answering model on one row (encoder + start/end projection)."""
    forward = config.num_hidden_layers * _layer_flops(config, sequence_length)
    forward += sequence_length * 2 * config.hidden_size * 2
    return FlopCount(forward_per_row=float(forward), sequence_length=sequence_length)


def _layer_flops(config: PretrainedConfig, sequence_length: int) -> int:
    """Forward FLOPs of one encoder layer on a row of `sequence_length` tokens."""
    hidden, intermediate, tokens = config.hidden_size, config.intermediate_size, sequence_length
    attention = 2 * tokens * 4 * hidden * hidden  # query, key, value and output projections
    attention += 2 * 2 * tokens * tokens * hidden  # scores (Q K^T) and context (P V), over all heads
    if config.model_type != "groupbert":
        return attention + 2 * tokens * 2 * hidden * intermediate

    grouped_ffn = 2 * tokens * (hidden * intermediate + intermediate * hidden // config.ffn_groups + hidden * hidden)
    convolution = 2 * tokens * (hidden * 2 * hidden + hidden * config.conv_group_size * config.conv_kernel_size + hidden * hidden)
    return attention + 2 * grouped_ffn + convolution
