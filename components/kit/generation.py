"""Loading a causal LM and greedy generation, shared by the causal-lm export and evaluate stages.

`load(path, runtime)` gives an eval-mode PyTorch causal LM or an `ORTModelForCausalLM` with its KV cache;
`greedy(model_or_session, tokenizer, prompt_ids, max_new_tokens)` continues prompts greedily with either,
or with a bare ONNX Runtime session (`rss_probe.session_greedy`); `greedy_generate` is its `generate` call,
which the RSS probe makes too. Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from components.kit.latency import runtime_kind
from components.kit.onnx_models import ONNX_FILE


def load(path: str | Path, runtime: str, threads: int | None = None):
    """An eval-mode PyTorch causal LM ("pytorch") or an `ORTModelForCausalLM` with its KV cache
    ("onnxruntime"), on CPU. `threads` sets torch's (global) or the session's intra-op thread count."""
    path = Path(path)
    if runtime_kind(runtime) == "torch":
        import torch
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        return AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True).eval()
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    folder, file_name = (path.parent, path.name) if path.is_file() else (path, ONNX_FILE)
    return ORTModelForCausalLM.from_pretrained(
        str(folder), file_name=file_name, use_cache=True, session_options=options, provider="CPUExecutionProvider"
    )


def load_tokenizer(path: str | Path):
    """The folder's tokenizer, padding on the left (where a decoder's prompts must end aligned)."""
    from transformers import AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path if path.is_dir() else path.parent))
    tokenizer.padding_side = "left"
    return tokenizer


def cut_at_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    """The tokens before the first eos (generate pads a finished row with eos too)."""
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens


def greedy(
    model_or_session,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    min_new_tokens: int = 0,
    batch_size: int = 1,
) -> list[list[int]]:
    """Greedy continuation (new token ids, eos and what follows cut off) of every prompt.

    `model_or_session` is a PyTorch causal LM or an `ORTModelForCausalLM` (both run `generate` with
    do_sample=False and the KV cache; prompts are left-padded in batches of `batch_size`), or a bare
    onnxruntime InferenceSession of a decoder with past key values (batch 1, `rss_probe.session_greedy`).
    With min_new_tokens == max_new_tokens every continuation has exactly that many tokens.
    """
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad_id = eos_id if pad_id is None else pad_id
    if not hasattr(model_or_session, "generate"):
        from components.kit.rss_probe import session_greedy

        return [session_greedy(model_or_session, list(p), max_new_tokens, eos_id, min_new_tokens) for p in prompt_ids]
    import torch

    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [list(p) for p in prompt_ids[start : start + batch_size]]
        width = max(len(r) for r in rows)
        if min(len(r) for r in rows) == 0:
            raise ValueError("greedy needs non-empty prompts")
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        generated = greedy_generate(model_or_session, ids, mask, max_new_tokens, min_new_tokens, pad_id, eos_id)
        out += [cut_at_eos(row[width:].tolist(), eos_id) for row in generated]
    return out


def greedy_generate(model, ids, mask, max_new_tokens: int, min_new_tokens: int, pad_id: int, eos_id: int):
    """transformers' `generate` of a PyTorch causal LM or an `ORTModelForCausalLM`: greedy (no sampling, one
    beam), with the KV cache, without autograd. Gives the prompt ids followed by the new ones, row by row."""
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
