"""GroupBERT model configuration and the named model sizes shared by GroupBERT and BERT."""

from __future__ import annotations

from typing import NamedTuple

from transformers import BertConfig, PretrainedConfig


class ModelSize(NamedTuple):
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int


# Sizes of the BERT family (Turc et al. 2019 for tiny, mini and medium; Devlin et al. 2019 for base
# and large). Every size uses a head size of 64 except tiny (2 heads of 64) and mini (4 heads of 64).
MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(2, 128, 2),
    "mini": ModelSize(4, 256, 4),
    "medium": ModelSize(8, 512, 8),
    "base": ModelSize(12, 768, 12),
    "large": ModelSize(24, 1024, 16),
}


class GroupBertConfig(PretrainedConfig):
    """Configuration of a GroupBERT model (Chelombiev et al. 2021, arXiv 2106.05822).

    It holds BERT's keys plus three GroupBERT keys, with the names of Graphcore's published
    `groupbert` checkpoints:

    - `ffn_groups` (int, 4): groups G of the grouped down-projection in each feed-forward module.
      G = 1 gives a dense down-projection.
    - `conv_kernel_size` (int, 7): kernel size K of the grouped 1-D convolution over the sequence.
    - `conv_group_size` (int, 16): channels per group of that convolution, so it has
      hidden_size / conv_group_size groups.

    `intermediate_size` defaults to 4 x `hidden_size`. Dropout defaults to 0, as in GroupBERT
    pre-training, and `layer_norm_eps` to 1e-3, the value of every published GroupBERT configuration.
    """

    model_type = "groupbert"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-3,
        ffn_groups: int = 4,
        conv_kernel_size: int = 7,
        conv_group_size: int = 16,
        pad_token_id: int = 0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.ffn_groups = ffn_groups
        self.conv_kernel_size = conv_kernel_size
        self.conv_group_size = conv_group_size
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        validate_model_config(self)


def validate_model_config(config: PretrainedConfig) -> None:
    """Raise ValueError naming the key when the sizes of a GroupBERT or BERT config cannot work together."""
    _require_divisible(config, "hidden_size", "num_attention_heads")
    if config.model_type != "groupbert":
        return
    _require_divisible(config, "hidden_size", "ffn_groups")
    _require_divisible(config, "intermediate_size", "ffn_groups")
    _require_divisible(config, "hidden_size", "conv_group_size")
    if config.conv_kernel_size < 1 or config.conv_kernel_size % 2 == 0:
        # An even kernel cannot be centred on its token, so "same" zero padding is not symmetric.
        raise ValueError(
            f"conv_kernel_size must be a positive odd number so the convolution is centred on each token, "
            f"got {config.conv_kernel_size}; use 7 as in the published GroupBERT models"
        )


def _require_divisible(config: PretrainedConfig, numerator_key: str, denominator_key: str) -> None:
    numerator = getattr(config, numerator_key)
    denominator = getattr(config, denominator_key)
    if denominator < 1 or numerator % denominator != 0:
        raise ValueError(
            f"{numerator_key} ({numerator}) must be a multiple of {denominator_key} ({denominator}); "
            f"change one of the two"
        )


def groupbert_config(size: str, **overrides) -> GroupBertConfig:
    """Build the GroupBERT config of a named size (tiny, mini, medium, base or large)."""
    return GroupBertConfig(**_size_keys(size), **overrides)


def bert_config(size: str, **overrides) -> BertConfig:
    """Build the standard BERT config of a named size, with BERT's defaults (LayerNorm eps 1e-12, dropout 0.1)."""
    keys = _size_keys(size)
    keys["intermediate_size"] = 4 * keys["hidden_size"]
    keys.update(overrides)
    return BertConfig(**keys)


def _size_keys(size: str) -> dict:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    layers, hidden, heads = MODEL_SIZES[size]
    return {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads}
