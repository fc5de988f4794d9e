"""Trie-constrained beam search over a causal LM, on tensors (geogr.md §4.4), and its HF reference.

`trie_beam_search` prefills the B left-padded prompts once, expands the KV cache to B·W rows and then, for each
SID position ℓ, takes the log-softmax over the *full* vocabulary (HF's normalisation), slices the level's K_ℓ
token columns, masks the codes the trie forbids after each beam's prefix (one gather from `children[ℓ]`), adds
the beam scores and keeps the top W of the W·K_ℓ candidates per request. Masking comes before the top-k, so every
returned SID is valid by construction; when fewer than W valid SIDs exist, the extra beams stay at -inf and come
back as leaf -1.

`hf_constrained_beam_search` is the reference: HF `generate` with beam search and a Python
`prefix_allowed_tokens_fn` (one call per beam per step), every generation setting explicit. With equal-length
SIDs and `length_penalty=0` both rank by the same summed log-probability, so they return the same top W.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rankstack.retrieval.trie import SidTrie


@dataclass
class BeamSearchOutput:
    """Top-W SIDs per request, best first.

    Attributes: leaves [B, W] (trie leaf ids, -1 for an empty beam); codes [B, W, L] (-1 for an empty beam);
    scores [B, W] (Σ log p over the SID tokens, -inf for an empty beam).
    """

    leaves: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded prompts, as HF `generate` builds them (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def trie_beam_search(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: SidTrie,
                     num_beams: int) -> BeamSearchOutput:
    """Batched trie-constrained beam search of width `num_beams` over the SIDs of `trie`.

    `input_ids`, `attention_mask`: [B, T] left-padded prompts; `trie` must sit on the model's device.
    """
    batch, width, length = input_ids.shape[0], num_beams, trie.length
    device = input_ids.device
    positions = prompt_positions(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = out.cache
    cache.batch_repeat_interleave(width)
    logits = out.logits[:, -1].float().repeat_interleave(width, dim=0)
    mask = attention_mask.repeat_interleave(width, dim=0)
    next_position = positions[:, -1:].repeat_interleave(width, dim=0) + 1

    score = torch.full((batch, width), float("-inf"), device=device)
    score[:, 0] = 0.0  # all beams start identical: only the first may expand, or the top-W would repeat it
    score = score.view(-1)
    state = torch.zeros(batch * width, dtype=torch.long, device=device)
    codes = torch.empty(batch * width, 0, dtype=torch.long, device=device)
    request_base = (torch.arange(batch, device=device) * width)[:, None]
    for depth in range(length):
        size = trie.level_sizes[depth]
        offset = int(trie.level_offsets[depth])
        logp = F.log_softmax(logits, dim=-1)[:, offset:offset + size]
        candidates = torch.where(trie.allowed(depth, state), logp, float("-inf")) + score[:, None]
        top_scores, top_index = candidates.view(batch, width * size).topk(width, dim=1)
        source = (request_base + top_index // size).view(-1)
        code = (top_index % size).view(-1)
        score = top_scores.view(-1)
        state = torch.where(torch.isfinite(score), trie.step(depth, state[source], code), -1)
        codes = torch.cat([codes[source], code[:, None]], dim=1)
        if depth + 1 < length:
            cache.reorder_cache(source)
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            out = model(input_ids=(code + offset)[:, None], attention_mask=mask, position_ids=next_position,
                        cache=cache, use_cache=True)
            logits = out.logits[:, -1].float()
            next_position = next_position + 1
    dead = state < 0
    codes = codes.masked_fill(dead[:, None], -1)
    return BeamSearchOutput(state.view(batch, width), codes.view(batch, width, length), score.view(batch, width))


def hf_prefix_allowed_tokens_fn(trie: SidTrie, prompt_length: int) -> Callable[[int, torch.Tensor], list[int]]:
    """The per-beam callback of HF `generate`: the SID tokens the trie allows after what the beam generated."""
    def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
        return trie.allowed_token_ids(sequence[prompt_length:].tolist())

    return allowed


@torch.no_grad()
def hf_constrained_beam_search(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: SidTrie,
                               num_beams: int, pad_token_id: int) -> BeamSearchOutput:
    """The reference path: HF `generate` + `prefix_allowed_tokens_fn`, in `BeamSearchOutput` form."""
    batch, prompt_length, length = input_ids.shape[0], input_ids.shape[1], trie.length
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams,
        num_return_sequences=num_beams, max_new_tokens=length, min_new_tokens=length, do_sample=False,
        temperature=None, top_k=None, top_p=None, length_penalty=0.0, early_stopping=False,
        prefix_allowed_tokens_fn=hf_prefix_allowed_tokens_fn(trie, prompt_length), pad_token_id=pad_token_id,
        eos_token_id=None, output_scores=True, return_dict_in_generate=True)
    generated = out.sequences[:, prompt_length:]
    codes = generated - trie.level_offsets[None, :].to(generated.device)
    leaves = trie.leaves_of(codes)
    scores = out.sequences_scores.float()
    return BeamSearchOutput(leaves.view(batch, num_beams), codes.view(batch, num_beams, length),
                            scores.view(batch, num_beams))


def to_candidates(output: BeamSearchOutput, trie: SidTrie, top_k: int | None = None,
                  histories: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K POIs (catalogue indices) and candidate scores exp(Σ log p) per request, for the cascade.

    A leaf holding several POIs (`set` collisions) expands to all of them, each with the leaf's score, ordered by
    the request's visits to them in `histories` (catalogue indices per request, when given), then by the trie's
    item order (popularity): geogr.md §3.5. Returns `[B, K]` items (-1 padding) and `[B, K]` scores (0 pad).
    """
    batch, width = output.leaves.shape
    k = top_k or width
    items = torch.full((batch, k), -1, dtype=torch.long)
    scores = torch.zeros(batch, k)
    leaves, probs = output.leaves.cpu(), output.scores.exp().cpu()
    for b in range(batch):
        filled = 0
        visits = Counter() if histories is None else Counter(histories[b])
        for w in range(width):
            leaf = int(leaves[b, w])
            if leaf < 0 or filled >= k:
                continue
            members = trie.leaf_items(leaf)
            if visits and len(members) > 1:
                members = sorted(members, key=lambda item: -visits[item])  # stable: popularity breaks ties
            for item in members[: k - filled]:
                items[b, filled], scores[b, filled] = item, probs[b, w]
                filled += 1
    return items, scores
