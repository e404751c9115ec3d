"""Text tokenizer: a thin wrapper over Hugging Face ``tokenizers`` (a trained BPE or a pretrained LLM's)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from anygen.errors import CheckpointError, InvalidArgumentError

FILE = "tokenizer.json"


class TextTokenizer:
    """Text <-> ids. Special-token strings inside user text are encoded as plain text, never as specials.

    Example:
        >>> tok = TextTokenizer.train(["a red circle", "a blue square"], vocab_size=300)
        >>> tok.decode(tok.encode("a red square"))
        'a red square'
    """

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        # Text a user typed must stay text: "<|image|>" or "<|im_start|>" in a prompt never becomes a special id.
        self.backend.encode_special_tokens = True

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 1) -> "TextTokenizer":
        """Train a byte-level BPE on ``texts`` (offline, about a second for a caption corpus)."""
        if vocab_size < 257:
            raise InvalidArgumentError(f"vocab_size={vocab_size} must be >= 257 (256 bytes + merges)")
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        """Number of ids the text side uses: its highest id + 1 (base vocabulary plus its own added tokens).

        Not the token count: a ``tokenizer.json`` whose ids have gaps still encodes to its highest id.
        """
        return max(self.backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.backend.save(str(Path(directory) / FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, gguf_file: str | None = None) -> "TextTokenizer":
        """Load ``tokenizer.json`` from a local directory (ours, or a pretrained LLM's), or a GGUF file's tokenizer."""
        if gguf_file is not None:
            from transformers import AutoTokenizer

            try:
                hf = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, local_files_only=True)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"cannot read the tokenizer of {Path(directory) / gguf_file}: {err}") from err
            return cls(hf.backend_tokenizer)
        path = Path(directory) / FILE
        if not path.is_file():
            raise CheckpointError(f"{path} not found: a text tokenizer directory needs a {FILE}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(f"cannot read text tokenizer {path}: {err}") from err
