"""The sub-word tokenizer of the embedded BPE code LM (``code_bpe``): byte-level BPE over Python source.

A token is a word piece a person recognises (``" return"``, ``"self"``, ``"    "``, ``"("``), so a
certificate "robust to any r edited tokens" counts edits of such pieces. It is a byte-level BPE (the
`tokenizers` package): the 256 byte values are in the vocabulary, so every string encodes and decodes
back exactly, and nothing is out of vocabulary. Two rules make the line structure of code visible in
tokens:

- a line break ``"\\n"`` is always a token of its own (never merged with indentation or text), so "the
  tokens of the last line" are exactly the tokens after the last ``"\\n"`` token;
- id 0 is ``<mask>``, a special token no text encodes to: the token an ablated position becomes and the
  one an empty copy is fed under token deletion (``mask_token_id``).

It is trained by ``python -m smoothgen.models.train_code_bpe`` on the training files of the LM corpus and
ships as ``weights/code_bpe.tokenizer.json``; load it with `smoothgen.models.load_tokenizer`.

Example:
    >>> from smoothgen.models import load_tokenizer
    >>> tok = load_tokenizer("code_bpe")
    >>> ids = tok.encode("def main():\\n    return 0\\n")     # int64 tensor
    >>> tok.decode(ids)
    'def main():\\n    return 0\\n'
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from smoothgen.errors import InvalidInputError, ModelLoadError
from smoothgen.models.lm import token_id_list, utf8_bytes

MASK_TOKEN = "<mask>"
"""The special token with id 0 (`CodeTokenizer.mask_token_id`)."""


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # a core dependency; a broken environment gets a clear error
        raise ModelLoadError("the BPE code LM needs the tokenizers package (pip install tokenizers)") from exc
    return tokenizers


def _pipeline(tokenizer: Any) -> None:
    """Set the normalization-free byte-level pipeline: "\\n" isolated, then GPT-2's byte-level split."""
    tk = _tokenizers()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Split(tk.Regex("\n"), behavior="isolated"),
        tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = tk.decoders.ByteLevel()


class CodeTokenizer:
    """A byte-level BPE tokenizer with the call convention `smoothgen.generative.SmoothedLM` reads.

    ``encode(str)`` returns the ids (int64 tensor), ``decode(ids)`` the text, ``mask_token_id`` is 0 and
    ``vocab_size`` the number of ids (the special token included).

    Args:
        tokenizer: A `tokenizers.Tokenizer` built by `train_code_tokenizer` (or loaded from its JSON).

    Raises:
        ModelLoadError: the tokenizer's id 0 is not ``<mask>``.
    """

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.token_to_id(MASK_TOKEN) != 0:
            raise ModelLoadError(f"a code tokenizer must have {MASK_TOKEN} as id 0")
        tokenizer.encode_special_tokens = True  # "<mask>" written in a prompt is text, never the mask token
        self._tokenizer = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.mask_token_id = 0
        self.unk_token_id = None

    @classmethod
    def from_file(cls, path: str | Path) -> CodeTokenizer:
        """Load a tokenizer saved by `save`.

        Raises:
            ModelLoadError: the file is missing or not a tokenizer.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"cannot load the code tokenizer from {path}: {exc}") from exc
        return cls.from_json(text, str(path))

    @classmethod
    def from_json(cls, text: str, source: str = "its JSON") -> CodeTokenizer:
        """Load a tokenizer from the JSON `to_str` gives (the text of a file saved by `save`).

        Raises:
            ModelLoadError: the text is not a tokenizer.
        """
        tk = _tokenizers()
        try:
            return cls(tk.Tokenizer.from_str(text))
        except Exception as exc:  # tokenizers raises its own Exception subclass for bad input
            raise ModelLoadError(f"cannot load the code tokenizer from {source}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file (what `from_file` reads)."""
        self._tokenizer.save(str(path))

    def to_str(self) -> str:
        """The tokenizer's JSON (its vocabulary, merges and pipeline)."""
        return self._tokenizer.to_str()

    def encode(self, text: str) -> torch.Tensor:
        """Encode a string (special-token text such as ``"<mask>"`` in it is encoded as ordinary bytes).

        Raises:
            InvalidInputError: text is not a str, or holds lone surrogates that UTF-8 cannot encode.

        Shapes:
            returns [number of tokens], int64.
        """
        return torch.tensor(self.encode_batch([text])[0], dtype=torch.int64)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Encode many strings at once (the tokenizers package runs them in parallel)."""
        texts = list(texts)
        for text in texts:
            utf8_bytes(text)  # a str that UTF-8 can encode, or InvalidInputError
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode(self, ids: Any) -> str:
        """Decode ids to text (the mask token decodes to nothing; a partial UTF-8 sequence to U+FFFD).

        Raises:
            InvalidInputError: ids is not a 1-D sequence of integers in [0, vocab_size).
        """
        values = token_id_list(ids, self.vocab_size)
        return self._tokenizer.decode(values, skip_special_tokens=True)

    @property
    def description(self) -> str:
        """One line for a model record: what the tokens are."""
        return (f"byte-level BPE (tokenizers {_tokenizers().__version__}), vocabulary {self.vocab_size}: id 0 "
                f"{MASK_TOKEN}, the 256 bytes, {self.vocab_size - 257} merges; line breaks are tokens of their own")

    def byte_length(self, token_id: int) -> int:
        """The number of UTF-8 bytes token_id spells (0 for the mask token)."""
        if int(token_id) == self.mask_token_id:
            return 0
        return len(self._tokenizer.id_to_token(int(token_id)))  # byte-level: one symbol per byte

    def piece(self, token_id: int) -> str:
        """The text of one token (bytes shown as text; a partial UTF-8 sequence as U+FFFD)."""
        return self.decode([int(token_id)])


def train_code_tokenizer(texts: Iterable[str], vocab_size: int) -> CodeTokenizer:
    """Train the byte-level BPE of `CodeTokenizer` on texts (deterministic for the same texts and release).

    Args:
        texts: Training texts.
        vocab_size: Ids in all: ``<mask>``, the 256 bytes and vocab_size − 257 merges.

    Returns:
        The trained tokenizer.
    """
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    _pipeline(tokenizer)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=int(vocab_size), special_tokens=[MASK_TOKEN], min_frequency=2, show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return CodeTokenizer(tokenizer)
