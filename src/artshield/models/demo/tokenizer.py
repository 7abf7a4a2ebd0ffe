"""A CLIP tokenizer built in the repo, with no download.

It is a genuine CLIP byte-level BPE (same normaliser, pre-tokeniser, ``</w>`` word ends and special tokens
as OpenAI's), but its merges are learned by the `tokenizers` library from a small corpus instead of
downloaded. Any text tokenises (unknown words fall back to byte-level pieces); words of the corpus become
single tokens. Real checkpoints ship their own tokenizer and never use this one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import pre_tokenizers
from tokenizers.trainers import BpeTrainer
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
    texts = [BASE_CORPUS, *corpus]
    seed = CLIPTokenizer()  # empty vocab: only to borrow CLIP's normaliser and pre-tokeniser
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend = seed._tokenizer
    backend.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    vocab: dict[str, int] = {}
    # CLIP's id order: byte symbols, byte symbols that end a word, learned merges, then the specials.
    for symbol in sorted(alphabet):
        vocab.setdefault(symbol, len(vocab))
    for symbol in sorted(alphabet):
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges = [tuple(m) if isinstance(m, list | tuple) else tuple(m.split(" ")) for m in trained["merges"]]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tokenizer


def tokenizer_summary(tokenizer: CLIPTokenizer) -> str:
    return json.dumps({"vocab_size": len(tokenizer), "model_max_length": tokenizer.model_max_length})
