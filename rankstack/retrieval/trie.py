"""SID tokens in an LM vocabulary and the prefix trie over valid SIDs, as tensors (geogr.md §4.1, §4.4).

**Tokens.** One token per (level, code): `<a_0>…<a_{K-1}>`, `<b_…>`, `<c_…>`, then `<d_…>` for the dedup token.
`add_sid_tokens` adds them in level order so that each level's ids are contiguous: the vocabulary id of code c
at level ℓ is `level_offsets[ℓ] + c`, which is all the decoder needs to slice a level's logits.

**Trie.** Per-depth tables: `children[ℓ]` is an int64 tensor [nodes at depth ℓ, K_ℓ] holding the child's node id
at depth ℓ + 1 (at the last depth: the *leaf*, i.e. the index of the SID among the distinct SIDs), or -1 where
no valid SID continues that way. A node's allowed next codes are `children[ℓ][node] >= 0`, one gather for a whole
batch of beams. Memory is Σ_ℓ nodes_ℓ · K_ℓ ints (≤ (1 + K + N)·K + N·D), unlike one [all nodes, K_max] table.
Each leaf lists its items (catalogue POI indices): one in `dedup` mode, all POIs sharing the code in `set` mode,
in `item_rank` order.

`SidTrie.full_grid` allows every code at every level without listing nodes (state = the prefix's mixed-radix
index): the EM M-step's search over the whole code grid (geogr.md §3.6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rankstack.errors import RankstackError

LEVEL_NAMES = "abcdefghij"


def sid_token(level: int, code: int) -> str:
    """The token of `code` at `level`: `<a_3>` for level 0, code 3."""
    return f"<{LEVEL_NAMES[level]}_{code}>"


def sid_tokens(level_sizes: Sequence[int]) -> list[str]:
    """Every SID token, level by level, codes ascending."""
    return [sid_token(level, code) for level, size in enumerate(level_sizes) for code in range(size)]


def sid_level_offsets(tokenizer: Any, level_sizes: Sequence[int]) -> tuple[int, ...]:
    """Vocabulary id of code 0 of each level; checks that every level's ids are contiguous."""
    offsets = []
    for level, size in enumerate(level_sizes):
        ids = tokenizer.convert_tokens_to_ids([sid_token(level, c) for c in range(size)])
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise RankstackError(f"the tokenizer lacks SID tokens of level {LEVEL_NAMES[level]}; add them with "
                                 "add_sid_tokens(tokenizer, model, level_sizes).")
        if ids != list(range(ids[0], ids[0] + size)):
            raise RankstackError(f"the SID tokens of level {LEVEL_NAMES[level]} have non-contiguous ids; add them "
                                 "with add_sid_tokens, which adds each level in code order.")
        offsets.append(ids[0])
    return tuple(offsets)


def add_sid_tokens(tokenizer: Any, model: Any, level_sizes: Sequence[int], seed: int = 0) -> tuple[int, ...]:
    """Add the SID tokens of `level_sizes` to `tokenizer` (if absent) and grow `model`'s embeddings to match;
    returns the per-level offsets. A model whose embedding matrix already has enough rows (padded vocabularies) is
    not resized. Idempotent.

    The new rows are drawn from N(mean, covariance) of the old rows (`init_rows_like_old`), at full scale.
    HF's own `mean_resizing` scales that covariance by 1e-9 (transformers 5.24, `_init_added_embeddings_weights_
    with_mean`), which leaves every SID token with practically the same embedding: a from-scratch model then
    cannot tell one input SID from another, and training stalls at the per-position code marginals.
    """
    tokens = sid_tokens(level_sizes)
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present and len(present) != len(tokens):
        raise RankstackError(f"the tokenizer has {len(present)} of the {len(tokens)} SID tokens (e.g. "
                             f"{present[0]}); start from a tokenizer with none of them or all of them.")
    if not present:
        tokenizer.add_tokens(tokens)
    offsets = sid_level_offsets(tokenizer, level_sizes)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        new_rows = torch.arange(old, len(tokenizer))
        generator = torch.Generator().manual_seed(seed)
        init_rows_like_old(model.get_input_embeddings().weight, new_rows, generator)
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            init_rows_like_old(output.weight, new_rows, generator)
    return offsets


@torch.no_grad()
def init_rows_like_old(weight: torch.Tensor, new_rows: torch.Tensor, generator: torch.Generator) -> None:
    """Fill `weight[new_rows]` with samples of N(mean, covariance) of the other rows (a small ridge keeps the
    covariance positive definite)."""
    keep = torch.ones(weight.shape[0], dtype=torch.bool)
    keep[new_rows] = False
    old = weight[keep].float()
    mean = old.mean(dim=0)
    centered = old - mean
    covariance = centered.T @ centered / max(len(old) - 1, 1)
    covariance += 1e-6 * covariance.diagonal().mean().clamp(min=1e-12) * torch.eye(len(mean))
    factor = torch.linalg.cholesky(covariance)
    noise = torch.randn(len(new_rows), len(mean), generator=generator)
    weight[new_rows] = (mean + noise @ factor.T).to(weight.dtype)


@dataclass
class SidTrie:
    """Valid SIDs as per-depth child tables (see the module docstring).

    Attributes:
        level_sizes: K_ℓ per position. level_offsets: [L] vocabulary id of code 0 per position.
        children: per depth ℓ, [nodes_ℓ, K_ℓ] child ids (-1: invalid); empty in full-grid mode.
        leaf_codes: [leaves, L] the distinct SIDs (leaf order). item_offsets, items: the items of leaf f are
            items[item_offsets[f]:item_offsets[f + 1]] (None in full-grid mode).
    """

    level_sizes: tuple[int, ...]
    level_offsets: torch.Tensor
    children: list[torch.Tensor]
    leaf_codes: torch.Tensor | None
    item_offsets: torch.Tensor | None
    items: torch.Tensor | None
    is_full_grid: bool = False

    @classmethod
    def from_codes(cls, codes: np.ndarray, level_sizes: Sequence[int], level_offsets: Sequence[int],
                   item_rank: np.ndarray | None = None) -> SidTrie:
        """Trie over the rows of `codes` [N, L] (row r = item r); items sharing a SID are ordered by ascending
        `item_rank` (default: item index)."""
        codes = np.asarray(codes, dtype=np.int64)
        sizes = tuple(int(k) for k in level_sizes)
        if codes.ndim != 2 or codes.shape[1] != len(sizes) or len(level_offsets) != len(sizes):
            raise RankstackError(f"codes of shape {codes.shape} do not match {len(sizes)} level sizes and "
                                 f"{len(level_offsets)} offsets.")
        if codes.size and ((codes < 0).any() or (codes >= np.asarray(sizes)[None, :]).any()):
            raise RankstackError(f"some codes fall outside their level's range {sizes}.")
        leaves, leaf_of_item = np.unique(codes, axis=0, return_inverse=True)
        leaf_of_item = leaf_of_item.ravel()
        children = []
        node = np.zeros(len(leaves), dtype=np.int64)  # each leaf's ancestor at the current depth
        for depth, size in enumerate(sizes):
            if depth + 1 < len(sizes):
                _, child = np.unique(leaves[:, : depth + 1], axis=0, return_inverse=True)
                child = child.ravel()
            else:
                child = np.arange(len(leaves))
            table = np.full((node.max() + 1 if len(node) else 1, size), -1, dtype=np.int64)
            table[node, leaves[:, depth]] = child
            children.append(torch.from_numpy(table))
            node = child
        rank = np.arange(len(codes)) if item_rank is None else np.asarray(item_rank)
        order = np.lexsort((np.arange(len(codes)), rank, leaf_of_item))
        offsets = np.concatenate([[0], np.cumsum(np.bincount(leaf_of_item, minlength=len(leaves)))])
        return cls(sizes, torch.tensor(list(level_offsets), dtype=torch.long), children,
                   torch.from_numpy(leaves), torch.from_numpy(offsets), torch.from_numpy(order))

    @classmethod
    def full_grid(cls, level_sizes: Sequence[int], level_offsets: Sequence[int]) -> SidTrie:
        """Every code at every level is allowed; leaves are mixed-radix indices of the code tuples."""
        return cls(tuple(int(k) for k in level_sizes), torch.tensor(list(level_offsets), dtype=torch.long), [],
                   None, None, None, is_full_grid=True)

    @property
    def length(self) -> int:
        return len(self.level_sizes)

    @property
    def num_leaves(self) -> int:
        return int(np.prod(self.level_sizes)) if self.is_full_grid else len(self.leaf_codes)

    def to(self, device: torch.device | str) -> SidTrie:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return SidTrie(self.level_sizes, self.level_offsets.to(device), [c.to(device) for c in self.children],
                       move(self.leaf_codes), move(self.item_offsets), move(self.items), self.is_full_grid)

    def allowed(self, depth: int, state: torch.Tensor) -> torch.Tensor:
        """[S, K_depth] bool: the codes allowed after the prefixes `state` (node ids at `depth`; -1: dead)."""
        alive = state >= 0
        if self.is_full_grid:
            return alive[:, None].expand(-1, self.level_sizes[depth])
        return (self.children[depth][state.clamp(min=0)] >= 0) & alive[:, None]

    def step(self, depth: int, state: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Node ids at depth + 1 after appending `code` to `state` (-1 where invalid or dead)."""
        if self.is_full_grid:
            valid = (state >= 0) & (code >= 0) & (code < self.level_sizes[depth])
            return torch.where(valid, state * self.level_sizes[depth] + code, -1)
        valid = (state >= 0) & (code >= 0) & (code < self.level_sizes[depth])
        child = self.children[depth][state.clamp(min=0), code.clamp(0, self.level_sizes[depth] - 1)]
        return torch.where(valid, child, -1)

    def leaves_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Leaf id of each SID row of `codes` [S, L]; -1 for invalid SIDs."""
        state = torch.zeros(len(codes), dtype=torch.long, device=codes.device)
        for depth in range(self.length):
            state = self.step(depth, state, codes[:, depth])
        return state

    def allowed_token_ids(self, generated: Sequence[int]) -> list[int]:
        """Vocabulary ids allowed after the SID tokens `generated` so far (the HF reference path's callback)."""
        offsets = self.level_offsets.tolist()
        state = torch.zeros(1, dtype=torch.long, device=self.level_offsets.device)
        for depth, token in enumerate(generated):
            if depth >= self.length:
                return []
            code = torch.tensor([token - offsets[depth]], device=state.device)
            state = self.step(depth, state, code)
        depth = len(generated)
        if depth >= self.length or int(state[0]) < 0:
            return []
        codes = torch.nonzero(self.allowed(depth, state)[0]).ravel()
        return (codes + offsets[depth]).tolist()

    def leaf_items(self, leaf: int) -> list[int]:
        """Items (catalogue POI indices) of one leaf, in `item_rank` order."""
        if self.items is None or self.item_offsets is None:
            raise RankstackError("a full-grid trie has no items: its leaves are bare code tuples.")
        return self.items[self.item_offsets[leaf]:self.item_offsets[leaf + 1]].tolist()
