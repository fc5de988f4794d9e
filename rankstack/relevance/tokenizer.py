"""A small byte-level BPE tokenizer trained offline on relevance text, as a HF `PreTrainedTokenizerFast`
(relevance.md §2 tokenizer note, §8 offline models).

The corpus is the train split's prompts (task, query and item text, rules) and completions in every paraphrase
template and variant, so the format's fixed words get their own tokens. Digits are pre-tokenized one by one
(`Digits(individual_digits=True)`), so each label 1-4 is a single token that never merges with its neighbours, and
the completion's first token is the bare label. The chat template is ChatML (`<|im_start|>role ... <|im_end|>`,
eos = `<|im_end|>`, pad = `<|pad|>`), padding on the left for single-pass scoring and generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rankstack.relevance.data import (
    TEMPLATE_COUNTS,
    RelevanceRecord,
    prompt_message,
    render_completion,
)
from rankstack.relevance.format import VARIANTS

PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def training_corpus(records: Sequence[RelevanceRecord], rule_table: dict[str, str]) -> Iterator[str]:
    """Prompts of every variant and completions in every template of each record (gold-less records: prompts)."""
    for record in records:
        for variant in VARIANTS:
            yield prompt_message(record, rule_table, variant)
        if record.gold is None:
            continue
        for i in range(max(TEMPLATE_COUNTS.values())):
            templates = {name: i % n for name, n in TEMPLATE_COUNTS.items()}
            yield render_completion(record, "label_first", templates=templates)
        yield render_completion(record, "think_first", templates={name: 0 for name in TEMPLATE_COUNTS})


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with isolated digits and ChatML special tokens on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=IM_END,
                                   padding_side="left", chat_template=CHATML_TEMPLATE)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer folder (ours, or a local chat model's), padding on the left."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


__all__ = ["PAD", "IM_START", "IM_END", "CHATML_TEMPLATE", "training_corpus", "train_tokenizer", "load_tokenizer"]
