"""A CLIP tokenizer built in the repo, with no download.

It is a genuine CLIP byte-level BPE (same normaliser, pre-tokeniser, ``</w>`` word ends and special tokens
as OpenAI's), but its merges are learned from a small corpus instead of downloaded. They are learned here
(the classic pair-counting BPE, ties broken by the pair itself) rather than by ``tokenizers``' ``BpeTrainer``,
which breaks ties between equally frequent pairs in hash order and so learns a different vocabulary in
different processes: the demo model's training could not be resumed or reproduced with it. Any text
tokenises (unknown words fall back to byte-level pieces); words of the corpus become single tokens. Real
checkpoints ship their own tokenizer and never use this one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Words every prompt in the examples and docs uses, beyond the demo world's own captions.
BASE_CORPUS = (
    "a an the of in on with and painting photo picture drawing artwork image art style by artist sks "
    "portrait landscape dog cat person house tree sky sea flower mountain city street abstract"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024, model_max_length: int = 32) -> CLIPTokenizer:
    """Learn a CLIP-style BPE from `corpus` (plus a few common words) and return a `CLIPTokenizer`.

    `vocab_size` counts the 512 byte-level base symbols (with and without ``</w>``) and the two special
    tokens; learned merges fill the rest. Deterministic for a given corpus.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = CLIPTokenizer()._tokenizer  # empty vocab: only to borrow CLIP's normaliser and pre-tokeniser
    words: Counter[tuple[str, ...]] = Counter()
    for text in (BASE_CORPUS, *corpus):
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            words[(*piece[:-1], piece[-1] + "</w>")] += 1
    merges = learn_merges(words, vocab_size - 2 * len(alphabet) - 2)
    vocab: dict[str, int] = {}
    # CLIP's id order: byte symbols, byte symbols that end a word, learned merges, then the specials.
    for symbol in sorted(alphabet):
        vocab.setdefault(symbol, len(vocab))
    for symbol in sorted(alphabet):
        vocab.setdefault(symbol + "</w>", len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tokenizer


def learn_merges(words: Counter[tuple[str, ...]], limit: int) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first (ties: the smaller pair), until `limit` merges are learned or
    every word is one symbol. `words` counts each word as its tuple of symbols."""
    merges: list[tuple[str, str]] = []
    while len(merges) < limit:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        words = Counter({merge_pair(word, best): count for word, count in words.items()})
    return merges


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def tokenizer_summary(tokenizer: CLIPTokenizer) -> str:
    return json.dumps({"vocab_size": len(tokenizer), "model_max_length": tokenizer.model_max_length})
