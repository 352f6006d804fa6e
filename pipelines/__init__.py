"""Data pipelines: raw text to model-ready pre-training batches.

Modules that run as ``python -m pipelines.<name>`` (each has ``--help``):

- ``wikipedia``: a ``pages-articles`` XML dump to clean plain-text documents.
- ``pretraining_data``: dumps, text files or Hugging Face datasets to tokenised,
  memory-mapped shards of BERT pre-training pairs (the shard builder).
- ``packing``: the packing efficiency report for prepared data.
- ``generated``: a look at one batch of the generated (random-token) dataset.

Library modules used by the trainer: ``dataloader`` (``create_pretraining_dataloader``),
``generated`` (``create_generated_dataloader``), ``masking`` and ``packing``.
"""
