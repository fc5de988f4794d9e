"""SID tokens, the prefix trie and trie-constrained beam search (geogr.md §4.1, §4.4): validity under random
logits, equality with HF `generate` + `prefix_allowed_tokens_fn` on a tiny random Llama, the full-grid mode and
the candidate list handed to the cascade."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rankstack.errors import RankstackError
from rankstack.retrieval.decode import (
    hf_constrained_beam_search,
    hf_prefix_allowed_tokens_fn,
    to_candidates,
    trie_beam_search,
)
from rankstack.retrieval.semantic_ids import SemanticIds
from rankstack.retrieval.trie import SidTrie, add_sid_tokens, sid_level_offsets, sid_tokens

transformers = pytest.importorskip("transformers")


def random_sids(rng: np.random.Generator, n: int, sizes: tuple[int, ...]) -> np.ndarray:
    """Up to n distinct SIDs (3-level codes plus, when `sizes` has 4 entries, a dedup token)."""
    codes = np.unique(np.stack([rng.integers(0, k, n) for k in sizes[:3]], axis=1), axis=0)
    if len(sizes) == 4:
        codes = np.concatenate([codes, rng.integers(0, sizes[3], (len(codes), 1))], axis=1)
    return codes


def offsets_after(base: int, sizes: tuple[int, ...]) -> list[int]:
    return np.cumsum((base,) + sizes[:-1]).tolist()


def tiny_llama(vocab: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        initializer_range=0.5)  # large weights: well-separated log-probs, so near-ties do not blur the comparison
    return transformers.LlamaForCausalLM(config).eval()


def ragged_prompts(rng: np.random.Generator, batch: int, length: int, vocab: int) -> tuple[torch.Tensor, ...]:
    ids = torch.from_numpy(rng.integers(3, vocab, (batch, length)))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        pad = int(rng.integers(0, length - 1))
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


# ------------------------------------------------------------------------------------------------------------
# The trie


def test_trie_allows_exactly_the_prefixes_of_valid_sids() -> None:
    rng = np.random.default_rng(0)
    sizes = (4, 3, 5, 2)
    codes = random_sids(rng, 40, sizes)
    trie = SidTrie.from_codes(codes, sizes, offsets_after(10, sizes))
    valid = {tuple(r) for r in codes.tolist()}
    for depth in range(len(sizes)):
        prefixes = {s[:depth] for s in valid}
        for prefix in prefixes:
            allowed = trie.allowed_token_ids([c + int(trie.level_offsets[d]) for d, c in enumerate(prefix)])
            expected = sorted({s[depth] for s in valid if s[:depth] == prefix})
            assert allowed == [c + int(trie.level_offsets[depth]) for c in expected]
    # Every SID leads to a leaf holding its item; an invalid SID leads nowhere.
    leaves = trie.leaves_of(torch.from_numpy(codes))
    assert (leaves >= 0).all() and len(set(leaves.tolist())) == len(codes)
    assert [trie.leaf_items(int(f)) for f in leaves] == [[i] for i in range(len(codes))]
    missing = next(c for c in itertools.product(*map(range, sizes)) if c not in valid)
    assert int(trie.leaves_of(torch.tensor([missing]))[0]) == -1


def test_random_walks_over_the_trie_only_reach_valid_sids() -> None:
    """5,000 walks taking a random allowed code at each step all end on a valid SID; walks taking any random
    code die exactly when they leave the set of valid prefixes."""
    rng = np.random.default_rng(1)
    sizes = (8, 8, 8, 3)
    codes = random_sids(rng, 200, sizes)
    trie = SidTrie.from_codes(codes, sizes, offsets_after(0, sizes))
    valid = {tuple(r) for r in codes.tolist()}
    prefixes = {s[:d] for s in valid for d in range(5)}
    gen = torch.Generator().manual_seed(0)
    walks = 5000
    state = torch.zeros(walks, dtype=torch.long)
    path = torch.empty(walks, 0, dtype=torch.long)
    for depth, size in enumerate(sizes):
        allowed = trie.allowed(depth, state)
        assert allowed.any(dim=1).all()
        weights = allowed.float() * torch.rand(walks, size, generator=gen)
        code = weights.argmax(dim=1)
        state = trie.step(depth, state, code)
        path = torch.cat([path, code[:, None]], dim=1)
    assert all(tuple(p) in valid for p in path.tolist())
    assert (state >= 0).all()

    state = torch.zeros(walks, dtype=torch.long)
    path = torch.empty(walks, 0, dtype=torch.long)
    for depth, size in enumerate(sizes):
        code = torch.randint(0, size, (walks,), generator=gen)
        state = trie.step(depth, state, code)
        path = torch.cat([path, code[:, None]], dim=1)
        alive = [tuple(p) in prefixes for p in path.tolist()]
        assert (state >= 0).tolist() == alive


class RandomLogitsLM(torch.nn.Module):
    """A stand-in causal LM whose next-token logits are fresh random numbers at every call."""

    def __init__(self, vocab: int, seed: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, input_ids: torch.Tensor, cache: FakeCache | None = None, **_: object) -> SimpleNamespace:
        cache = cache or FakeCache(len(input_ids))
        assert cache.rows == len(input_ids)
        logits = torch.randn(len(input_ids), 1, self.vocab, generator=self.generator) * 4
        return SimpleNamespace(logits=logits, cache=cache)


class FakeCache:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.rows *= repeats

    def reorder_cache(self, index: torch.Tensor) -> None:
        assert len(index) == self.rows and int(index.max()) < self.rows


@pytest.mark.parametrize("width", [1, 5, 20])
def test_beam_search_under_random_logits_never_returns_an_invalid_sid(width: int) -> None:
    """geogr.md §10.1: 150 random catalogues and ragged batches per width; every returned SID is a valid,
    distinct SID, the best first, and exactly min(W, number of SIDs) beams survive."""
    rng = np.random.default_rng(width)
    for trial in range(150):
        sizes = (int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(1, 4)))
        codes = random_sids(rng, int(rng.integers(1, 60)), sizes)
        base = int(rng.integers(5, 30))
        trie = SidTrie.from_codes(codes, sizes, offsets_after(base, sizes))
        model = RandomLogitsLM(base + sum(sizes), seed=trial)
        ids, mask = ragged_prompts(rng, int(rng.integers(1, 5)), 6, base)
        out = trie_beam_search(model, ids, mask, trie, width)
        valid = {tuple(r) for r in codes.tolist()}
        for b in range(len(ids)):
            alive = out.leaves[b] >= 0
            assert int(alive.sum()) == min(width, len(codes))
            assert alive[: int(alive.sum())].all()  # dead beams come last
            sids = [tuple(c) for c in out.codes[b][alive].tolist()]
            assert all(s in valid for s in sids) and len(set(sids)) == len(sids)
            assert torch.equal(trie.leaves_of(out.codes[b][alive]), out.leaves[b][alive])
            scores = out.scores[b][alive]
            assert torch.isfinite(scores).all() and (scores[:-1] >= scores[1:]).all()
            assert torch.isinf(out.scores[b][~alive]).all() and (out.codes[b][~alive] == -1).all()


# ------------------------------------------------------------------------------------------------------------
# Tensor search = HF reference


@pytest.mark.parametrize("width", [5, 20])
def test_tensor_beam_search_equals_hf_prefix_allowed_tokens_fn(width: int) -> None:
    rng = np.random.default_rng(3)
    sizes = (8, 8, 8, 3)
    codes = random_sids(rng, 300, sizes)
    base = 40
    trie = SidTrie.from_codes(codes, sizes, offsets_after(base, sizes))
    model = tiny_llama(base + sum(sizes))
    ids, mask = ragged_prompts(rng, 3, 9, base)
    ours = trie_beam_search(model, ids, mask, trie, width)
    reference = hf_constrained_beam_search(model, ids, mask, trie, width, pad_token_id=0)
    assert torch.equal(ours.leaves, reference.leaves)
    assert torch.equal(ours.codes, reference.codes)
    torch.testing.assert_close(ours.scores, reference.scores, atol=1e-4, rtol=0)
    assert (reference.leaves >= 0).all()


def test_full_grid_search_is_exact_when_the_beam_covers_the_first_level() -> None:
    """With W >= K_1 and two levels, beam search keeps every first token, so it returns the exact top W of
    all K_1·K_2 sequences, scored here one by one with full forward passes."""
    sizes = (4, 3)
    base = 20
    trie = SidTrie.full_grid(sizes, offsets_after(base, sizes))
    model = tiny_llama(base + sum(sizes), seed=1)
    ids, mask = ragged_prompts(np.random.default_rng(4), 2, 5, base)
    out = trie_beam_search(model, ids, mask, trie, 4)
    for b in range(2):
        prompt = ids[b][mask[b] == 1]
        scored = []
        for c1, c2 in itertools.product(range(4), range(3)):
            seq = torch.cat([prompt, torch.tensor([base + c1, base + 4 + c2])])[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), dim=-1)
            n = len(prompt)
            scored.append((float(logp[n - 1, base + c1] + logp[n, base + 4 + c2]), c1 * 3 + c2))
        scored.sort(reverse=True)
        assert out.leaves[b].tolist() == [leaf for _, leaf in scored[:4]]
        torch.testing.assert_close(out.scores[b], torch.tensor([s for s, _ in scored[:4]]), atol=1e-4, rtol=0)
        assert out.codes[b].tolist() == [[leaf // 3, leaf % 3] for _, leaf in scored[:4]]


# ------------------------------------------------------------------------------------------------------------
# SID tokens in a real tokenizer, end to end


def bpe_tokenizer() -> object:
    tokenizers = pytest.importorskip("tokenizers")
    corpus = ["coffee shop open 07-19 area g_12", "hotel with parking near the station", "noodles, spicy, cheap"]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>",
                                                                             "<|unk|>"])
    tok.train_from_iterator(corpus * 20, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                                eos_token="<|eos|>", unk_token="<|unk|>", padding_side="left")


def test_sid_tokens_are_single_contiguous_tokens_and_decode_end_to_end() -> None:
    tokenizer = bpe_tokenizer()
    assert len(tokenizer("<a_12>")["input_ids"]) > 1  # before adding, a SID token splits into pieces
    sizes = (16, 16, 16, 2)
    base_vocab = len(tokenizer)
    model = tiny_llama(base_vocab, seed=2)
    offsets = add_sid_tokens(tokenizer, model, sizes)
    assert offsets == tuple(offsets_after(base_vocab, sizes))
    assert model.get_input_embeddings().weight.shape[0] == base_vocab + sum(sizes)
    assert tokenizer("<a_12><b_3><c_15><d_1>")["input_ids"] == [offsets[0] + 12, offsets[1] + 3, offsets[2] + 15,
                                                                   offsets[3] + 1]
    assert add_sid_tokens(tokenizer, model, sizes) == offsets  # idempotent
    assert sid_level_offsets(tokenizer, sizes) == offsets
    with pytest.raises(RankstackError, match="lacks SID tokens"):
        sid_level_offsets(tokenizer, (16, 16, 16, 2, 4))

    # Semantic IDs -> trie -> both searches on left-padded prompts from the tokenizer.
    rng = np.random.default_rng(5)
    codes = random_sids(rng, 120, sizes)
    sids = SemanticIds(np.arange(1, len(codes) + 1), codes, sizes, "dedup", np.zeros((3, 16, 2)),
                       np.zeros((len(codes), 2), dtype=np.float32), rng.integers(0, 9, len(codes)), {})
    trie = sids.trie(offsets)
    batch = tokenizer(["coffee shop", "hotel with parking near the station"], return_tensors="pt", padding=True)
    ours = trie_beam_search(model, batch["input_ids"], batch["attention_mask"], trie, 10)
    reference = hf_constrained_beam_search(model, batch["input_ids"], batch["attention_mask"], trie, 10,
                                           pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(ours.leaves, reference.leaves)
    torch.testing.assert_close(ours.scores, reference.scores, atol=1e-4, rtol=0)
    text = tokenizer.decode([int(t) for t in ours.codes[0, 0] + trie.level_offsets])
    assert text.replace(" ", "") == sids.sid_string(int(trie.leaf_items(int(ours.leaves[0, 0]))[0]))


def test_add_sid_tokens_refuses_a_partial_vocabulary() -> None:
    tokenizer = bpe_tokenizer()
    tokenizer.add_tokens(sid_tokens((4,)))
    with pytest.raises(RankstackError, match="has 4 of the"):
        add_sid_tokens(tokenizer, tiny_llama(len(tokenizer)), (4, 4))


def test_prefix_fn_reads_only_the_generated_part() -> None:
    sizes = (3, 2)
    trie = SidTrie.from_codes(np.array([[0, 1], [2, 0]]), sizes, [10, 13])
    fn = hf_prefix_allowed_tokens_fn(trie, prompt_length=4)
    assert fn(0, torch.tensor([10, 12, 13, 14])) == [10, 12]       # prompt tokens that look like SIDs are ignored
    assert fn(0, torch.tensor([1, 1, 1, 1, 12])) == [13]
    assert fn(0, torch.tensor([1, 1, 1, 1, 11])) == []              # not a valid prefix


# ------------------------------------------------------------------------------------------------------------
# Candidates for the cascade


def test_set_collisions_expand_to_every_poi_of_a_code_by_user_visits_then_popularity() -> None:
    codes = np.array([[0, 0, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]])
    popularity = np.array([3, 5, 9, 1])
    trie = SidTrie.from_codes(codes, (2, 2, 2), [0, 2, 4], item_rank=-popularity)
    leaf_shared = int(trie.leaves_of(torch.tensor([[0, 0, 1]]))[0])
    leaf_single = int(trie.leaves_of(torch.tensor([[1, 1, 1]]))[0])
    assert trie.leaf_items(leaf_shared) == [2, 0, 3]
    out = SimpleNamespace(leaves=torch.tensor([[leaf_single, leaf_shared, -1]]),
                          scores=torch.tensor([[-0.5, -1.0, float("-inf")]]))
    items, scores = to_candidates(out, trie, top_k=3)
    assert items.tolist() == [[1, 2, 0]]
    torch.testing.assert_close(scores, torch.exp(torch.tensor([[-0.5, -1.0, -1.0]])))
    items, _ = to_candidates(out, trie, top_k=6)
    assert items.tolist() == [[1, 2, 0, 3, -1, -1]]
    # with the user's history (§3.5): the POIs the user visited most come first, popularity breaks the ties
    items, _ = to_candidates(out, trie, top_k=6, histories=[np.array([3, 3, 0, 1])])
    assert items.tolist() == [[1, 3, 0, 2, -1, -1]]
    items, _ = to_candidates(out, trie, top_k=6, histories=[[]])
    assert items.tolist() == [[1, 2, 0, 3, -1, -1]]
