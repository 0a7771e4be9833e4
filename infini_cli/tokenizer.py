"""The tokenizer: byte-level BPE (any input encodes), one token per digit.

A thin wrapper over the `tokenizers` library; the JSON form travels inside the checkpoint.
Documents of any length are encoded incrementally (see `IncrementalEncoder`) with exactly
the ids a whole-text encode would give.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, eos_token: Optional[str] = None, pad_token: Optional[str] = None) -> None:
        """eos_token / pad_token: a converted model's own (ours are SPECIAL_TOKENS)."""
        self._tok = tokenizer
        self._eos = eos_token or SPECIAL_TOKENS[0]
        self._pad = pad_token or SPECIAL_TOKENS[1]

    @classmethod
    def from_json(cls, text: str, eos_token: Optional[str] = None, pad_token: Optional[str] = None) -> "TextTokenizer":
        return cls(Tokenizer.from_str(text), eos_token, pad_token)

    def to_json(self) -> str:
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self._tok.token_to_id(self._eos)

    @property
    def pad_id(self) -> int:
        pad = self._tok.token_to_id(self._pad)
        return self.eos_id if pad is None else pad

    @property
    def backend(self) -> Tokenizer:
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def new_bpe_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Digits first, one per token: numbers (passkeys) then tokenize the same everywhere.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    tok = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)
