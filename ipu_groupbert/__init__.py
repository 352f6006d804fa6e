"""GroupBERT pre-training and SQuAD fine-tuning on IPUs (PopTorch) and on CPUs and GPUs (PyTorch).

Importing the package registers the `groupbert` model type with the `transformers` Auto classes.
"""

from .models import (
    GroupBertConfig,
    GroupBertForPreTraining,
    GroupBertForQuestionAnswering,
    GroupBertModel,
)

__all__ = ["GroupBertConfig", "GroupBertForPreTraining", "GroupBertForQuestionAnswering", "GroupBertModel"]
