"""Time one training step of the default 3-layer student (hidden 384, 12 heads, FFN 1536, the teacher's
30,522-wordpiece vocabulary) on the CPU: batch 32 of 28 tokens, forward, backward and AdamW, as the distill
and prune stages run it. It compares the optimizer kernels and a frozen word-embedding table
(`freeze_word_embeddings`), the levers behind the training times in docs/measured.md.

    .venv/bin/python infra/bench/train_step.py [--threads 2] [--steps 40]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import BertConfig, BertForSequenceClassification


def step_ms(threads: int, steps: int, fused: bool, frozen: bool) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536)
    model = BertForSequenceClassification(config)
    model.get_input_embeddings().weight.requires_grad_(not frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    ids, labels = torch.randint(1000, 20000, (32, 28)), torch.randint(0, 2, (32,))

    def step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(5):  # warm-up: allocator and kernels
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    for name, fused, frozen in (
        ("AdamW (foreach)", False, False),
        ("AdamW (fused)", True, False),
        ("AdamW (fused), word embeddings frozen", True, True),
    ):
        print(f"{name}: {step_ms(args.threads, args.steps, fused, frozen):.0f} ms/step", flush=True)


if __name__ == "__main__":
    main()
