"""Pre-training throughput of our BERT baseline against Hugging Face `BertForPreTraining`, side by side.

Both models get the same config, the same weights and the same batches; each measurement is one
full training step (forward, backward, AdamW step). The two models alternate, round after round,
in one process, so machine noise hits both alike; the result is their ratio. GroupBERT at the same
size is timed too, for reference.

Ours evaluates the MLM head only at the `mask_tokens` masked positions; Hugging Face's computes
vocabulary logits at every position and masks the loss, so the gap grows with sequence length.

    python -m benchmarks.pretraining_throughput --size mini --batch-size 8 --sequence-length 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import transformers

from ipu_groupbert.models import bert_config, build_model, groupbert_config


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="mini", choices=["tiny", "mini", "medium", "base", "large"])
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--sequence-length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--mask-tokens", type=int, default=20, help="masked positions per sequence")
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


def make_batch(args: argparse.Namespace, vocab_size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.sequence_length)
    input_ids = torch.randint(5, vocab_size, shape, generator=generator)
    positions = torch.stack([
        torch.randperm(args.sequence_length - 1, generator=generator)[: args.mask_tokens] + 1
        for _ in range(args.batch_size)
    ])
    labels = torch.gather(input_ids, 1, positions)
    dense_labels = torch.full(shape, -100, dtype=torch.long).scatter(1, positions, labels)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "token_type_ids": torch.zeros(shape, dtype=torch.long),
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
        "dense_labels": dense_labels,
        "next_sentence_labels": torch.randint(0, 2, (args.batch_size,), generator=generator),
    }


def ours_step(model, batch):
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
        masked_lm_positions=batch["masked_lm_positions"], masked_lm_labels=batch["masked_lm_labels"],
        next_sentence_labels=batch["next_sentence_labels"],
    ).loss


def hugging_face_step(model, batch):
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
        labels=batch["dense_labels"], next_sentence_label=batch["next_sentence_labels"],
    ).loss


def time_steps(model, optimizer, step_fn, batch, steps: int) -> float:
    """Return seconds per training step over `steps` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        step_fn(model, batch).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = bert_config(args.size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = build_model(config, "pretraining")
    reference = transformers.BertForPreTraining(config)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("decoder.bias" in key for key in missing), (missing, unexpected)
    groupbert = build_model(
        groupbert_config(args.size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), "pretraining"
    )

    batch = make_batch(args, config.vocab_size)
    candidates = {
        "ours_bert": (ours, ours_step),
        "hugging_face_bert": (reference, hugging_face_step),
        "ours_groupbert": (groupbert, ours_step),
    }
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, (model, _) in candidates.items()}
    for name, (model, step_fn) in candidates.items():
        model.train()
        time_steps(model, optimizers[name], step_fn, batch, 2)  # warm-up: allocation and kernel selection

    seconds = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, (model, step_fn) in candidates.items():
            seconds[name].append(time_steps(model, optimizers[name], step_fn, batch, args.steps))

    tokens = args.batch_size * args.sequence_length
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "size": args.size,
        "batch_size": args.batch_size,
        "sequence_length": args.sequence_length,
        "mask_tokens": args.mask_tokens,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "tokens_per_sec": {name: round(tokens / value, 1) for name, value in median.items()},
        "ours_bert_over_hugging_face": round(median["hugging_face_bert"] / median["ours_bert"], 3),
        "ours_groupbert_over_ours_bert_time": round(median["ours_groupbert"] / median["ours_bert"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
