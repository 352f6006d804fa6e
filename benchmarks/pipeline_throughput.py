"""Benchmark the pre-training data pipeline end to end.

Measures, in one run on this machine:

1. Wikipedia markup removal alone: MB of uncompressed XML dump per second.
2. Dump to shards (``prepare_pretraining_data``) with a given vocabulary: MB of
   uncompressed dump per second, end to end (reading, markup removal, sentence
   splitting, tokenisation, pair building, writing shards).
3. Plain text to shards: the same articles as text files, MB of text per second.
4. The first preparation, which also trains the vocabulary (the quick-start path).
5. The data loader: batches per second for unpacked and packed rows, next to the
   training steps per second of a tiny BERT (2 layers, hidden 128) from
   ``transformers``, as the ratio loader speed / model speed. A ratio well above 1
   means data loading does not limit a tiny model on CPU.

The default input is the English Wikipedia sample that ships with gensim (6.1 MB of
XML), so the benchmark runs offline. Pass ``--dump`` for another dump.

    python benchmarks/pipeline_throughput.py [--dump FILE] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.dataloader import create_pretraining_dataloader  # noqa: E402
from pipelines.pretraining_data import prepare_pretraining_data  # noqa: E402
from pipelines.shards import read_metadata  # noqa: E402
from pipelines.sources import gensim_sample_path  # noqa: E402
from pipelines.wikipedia import ExtractionCounts, iter_articles, write_documents  # noqa: E402


def time_extraction(dump: Path, workers: int, output_dir: Path) -> dict:
    counts = ExtractionCounts()
    start = time.perf_counter()
    files = write_documents(iter_articles(dump, workers=workers, counts=counts), output_dir, max_file_bytes=64_000_000)
    seconds = time.perf_counter() - start
    text_bytes = sum(path.stat().st_size for path in files)
    return {
        "articles": counts.articles,
        "dump_mb": counts.dump_bytes / 1e6,
        "text_mb": text_bytes / 1e6,
        "seconds": seconds,
        "dump_mb_per_s": counts.dump_bytes / 1e6 / seconds,
    }


def time_prepare(inputs: list[str], output_dir: Path, vocab_file: str | None, workers: int, sequence_length: int) -> dict:
    start = time.perf_counter()
    path = prepare_pretraining_data(
        inputs, output_dir, vocab_file=vocab_file, vocab_size=30522, sequence_length=sequence_length,
        validation_fraction=0.01, seed=1, workers=workers,
    )
    seconds = time.perf_counter() - start
    info = read_metadata(path)
    raw_mb = info.metadata["input_counts"]["raw_bytes"] / 1e6
    return {
        "path": str(path),
        "raw_mb": raw_mb,
        "seconds": seconds,
        "raw_mb_per_s": raw_mb / seconds,
        "sequences": info.counts["train"]["sequences"] + info.counts["validation"]["sequences"],
        "vocab_size": info.vocab_size,
    }


def time_loader(data_dir: str, packed: bool, batch_size: int, sequence_length: int, batches: int) -> float:
    loader = create_pretraining_dataloader(
        data_dir, micro_batch_size=batch_size, sequence_length=sequence_length, mask_tokens=20,
        packed_data=packed, max_sequences_per_pack=3, num_workers=0, seed=0, repeat=True,
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def time_tiny_bert(vocab_size: int, batch_size: int, sequence_length: int, data_dir: str, steps: int) -> float:
    """Training steps per second of a tiny BERT (2 layers, hidden 128) on one batch of the real data.

    The masked-LM decoder runs only at the masked positions, as in this project's model,
    so the vocabulary projection does not dominate the step.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, max_position_embeddings=512,
    )
    encoder = BertModel(config)
    transform = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.GELU(), torch.nn.LayerNorm(128))
    decoder_bias = torch.nn.Parameter(torch.zeros(vocab_size))
    next_sentence_head = torch.nn.Linear(128, 2)
    parameters = [*encoder.parameters(), *transform.parameters(), decoder_bias, *next_sentence_head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    loader = create_pretraining_dataloader(
        data_dir, micro_batch_size=batch_size, sequence_length=sequence_length, mask_tokens=20,
        num_workers=0, seed=0, repeat=True,
    )
    batch = next(iter(loader))

    def step():
        output = encoder(
            input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
        )
        positions = batch["masked_lm_positions"].unsqueeze(-1).expand(-1, -1, 128)
        masked_states = transform(torch.gather(output.last_hidden_state, 1, positions))
        logits = masked_states @ encoder.embeddings.word_embeddings.weight.T + decoder_bias
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["masked_lm_labels"].flatten())
        loss = loss + torch.nn.functional.cross_entropy(
            next_sentence_head(output.pooler_output), batch["next_sentence_labels"][:, 0]
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", type=Path, default=None, help="Wikipedia XML dump (default: gensim's sample)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="markup workers (default: CPU cores)")
    parser.add_argument("--sequence-length", type=int, default=128, help="sequence length (default: 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="micro-batch size for the loader (default: 32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dump = args.dump or gensim_sample_path()
    torch.manual_seed(0)
    np.random.seed(0)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        results: dict = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "dump": str(dump),
            "workers": args.workers,
        }
        results["extraction"] = time_extraction(dump, args.workers, scratch / "text")
        results["first_prepare_with_vocab_training"] = time_prepare(
            [str(dump)], scratch / "trained", None, args.workers, args.sequence_length
        )
        vocab_file = str(Path(results["first_prepare_with_vocab_training"]["path"]) / "vocab.txt")
        results["dump_to_shards"] = time_prepare(
            [str(dump)], scratch / "dump_shards", vocab_file, args.workers, args.sequence_length
        )
        results["text_to_shards"] = time_prepare(
            [str(scratch / "text")], scratch / "text_shards", vocab_file, args.workers, args.sequence_length
        )
        data_dir = results["dump_to_shards"]["path"]
        unpacked = time_loader(data_dir, False, args.batch_size, args.sequence_length, 100)
        packed = time_loader(data_dir, True, args.batch_size, args.sequence_length, 100)
        model = time_tiny_bert(
            results["dump_to_shards"]["vocab_size"], args.batch_size, args.sequence_length, data_dir, 20
        )
        results["loader"] = {
            "batch_size": args.batch_size,
            "unpacked_batches_per_s": unpacked,
            "packed_batches_per_s": packed,
            "tiny_bert_steps_per_s": model,
            "unpacked_ratio": unpacked / model,
            "packed_ratio": packed / model,
        }

    extraction = results["extraction"]
    print(f"machine: {results['machine']}; input {dump.name}; {args.workers} markup workers")
    print("| stage | input MB | seconds | MB/s |")
    print("|---|---|---|---|")
    print(f"| markup removal only | {extraction['dump_mb']:.1f} | {extraction['seconds']:.1f} | {extraction['dump_mb_per_s']:.2f} |")
    for label, key in (
        ("dump to shards, given vocabulary", "dump_to_shards"),
        ("text to shards, given vocabulary", "text_to_shards"),
        ("dump to shards, training the vocabulary", "first_prepare_with_vocab_training"),
    ):
        entry = results[key]
        print(f"| {label} | {entry['raw_mb']:.1f} | {entry['seconds']:.1f} | {entry['raw_mb_per_s']:.2f} |")
    loader = results["loader"]
    print(
        f"loader, batch {loader['batch_size']} x {args.sequence_length}, 0 workers: "
        f"{loader['unpacked_batches_per_s']:.0f} unpacked / {loader['packed_batches_per_s']:.0f} packed batches/s; "
        f"tiny BERT training: {loader['tiny_bert_steps_per_s']:.1f} steps/s; ratio "
        f"{loader['unpacked_ratio']:.0f}x unpacked, {loader['packed_ratio']:.0f}x packed"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
