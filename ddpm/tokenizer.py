"""Word-level tokenizer over a built-in vocabulary of the metadata prompts; nothing to download.

Prompts look like "Female, age in 40s, normal BMI, heart failure". Text is lowercased and split into
words and single punctuation marks; unknown words become <unk> (the prompt parser validates elsewhere).
"""
from __future__ import annotations

import re
from typing import Sequence, Union

import torch
from torch import Tensor

from data.attributes import AGE_RANGE, BMI_CATEGORIES, HEALTH_CONDITIONS, SEXES
from data.errors import InputError

SPECIAL_TOKENS = ("<pad>", "<sot>", "<eot>", "<unk>")
PAD_ID, SOT_ID, EOT_ID, UNK_ID = 0, 1, 2, 3
PUNCTUATION = (",", ".", ";", ":", "-", "(", ")", "/")
# Template words of the prompt plus a few generic ones a hand-written prompt may use.
TEMPLATE_WORDS = ("age", "in", "bmi", "a", "an", "and", "with", "of", "no", "unknown", "patient",
                  "years", "old", "aged", "disease", "cardiac", "heart")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def default_vocabulary() -> list[str]:
    """Deterministic vocabulary: specials, punctuation, template words, attribute words, age decades."""
    decades = [f"{d}s" for d in range(0, int(AGE_RANGE[1]) + 1, 10)]
    attribute_words = [w for value in (*SEXES, *BMI_CATEGORIES, *HEALTH_CONDITIONS) for w in value.split("_")]
    vocab: list[str] = []
    for word in (*SPECIAL_TOKENS, *PUNCTUATION, *TEMPLATE_WORDS, *attribute_words, *decades):
        if word not in vocab:
            vocab.append(word)
    return vocab


def split_words(text: str) -> list[str]:
    """'Female, age in 40s' -> ['female', ',', 'age', 'in', '40s']; '_' separates words like a space."""
    return _WORD.findall(text.lower().replace("_", " "))


def eot_positions(tokens: Tensor) -> Tensor:
    """Index of the first <eot> per row. tokens: (B, L) -> (B,) LongTensor."""
    is_eot = tokens == EOT_ID
    if not bool(is_eot.any(dim=1).all()):
        raise InputError("tokens", "every token row must contain <eot>; encode prompts with Tokenizer.encode")
    return is_eot.long().argmax(dim=1)


class Tokenizer:
    """Word-level tokenizer: <pad>=0, <sot>=1, <eot>=2, <unk>=3, then the built-in words."""

    def __init__(self, extra_words: Sequence[str] = ()) -> None:
        self.vocab = default_vocabulary()
        self.vocab += [w for w in dict.fromkeys(w.lower() for w in extra_words) if w not in self.vocab]
        self.token_to_id = {word: i for i, word in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Union[str, Sequence[str]], context_length: int = 16) -> Tensor:
        """<sot> words <eot> <pad>...: (B, context_length) LongTensor; long prompts truncated, <eot> kept last."""
        if context_length < 2:
            raise InputError("context_length", f"expected >= 2 (room for <sot> and <eot>), got {context_length}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.token_to_id.get(w, UNK_ID) for w in split_words(text)][: context_length - 2]
            ids = [SOT_ID, *ids, EOT_ID]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens

    def decode(self, tokens: Tensor) -> list[str]:
        """Inverse of encode up to case and spacing: (B, L) -> B strings, e.g. "female, age in 40s"."""
        texts = []
        for row in tokens.tolist():
            row = row[: row.index(EOT_ID)] if EOT_ID in row else row
            text = " ".join(self.vocab[i] for i in row if i not in (PAD_ID, SOT_ID))
            texts.append(re.sub(r" ([,.;:)])", r"\1", text))
        return texts
