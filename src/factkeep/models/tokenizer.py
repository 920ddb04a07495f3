"""Word-level tokenizers for the synthetic world, saved as standard Hugging Face fast tokenizers.

Every word, punctuation mark and newline is one token, so each entity name piece and each attribute
value of the synthetic world is exactly one token. The result is a ``PreTrainedTokenizerFast`` that
``AutoTokenizer.from_pretrained`` loads like any other tokenizer.

Example::

    tok = build_word_tokenizer(["alice", "paris"])
    tok.save_pretrained("runs/world/model")
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

# A token is a newline, a run of word characters, or one other non-space character.
WORD_PATTERN = r"\n|\w+|[^\w\s]"


def split_words(text: str) -> list[str]:
    """Split text the way the word-level tokenizer does (lowercased)."""
    return re.findall(WORD_PATTERN, text.lower())


def build_word_tokenizer(
    words: Iterable[str], model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A lowercasing word-level fast tokenizer over ``words`` plus special tokens.

    Args:
        words: every word the tokenizer must know (any text: it is split with :func:`split_words`).
            Order of first appearance fixes the ids, so the same words give the same tokenizer.
        model_max_length: the longest sequence the model takes.

    Returns:
        A tokenizer with ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>`` as ids 0..3; unknown words
        map to ``<unk>``. Decoding joins tokens with spaces.
    """
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for text in words:
        for piece in split_words(text):
            vocab.setdefault(piece, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
