"""Text to model inputs without transformers: a `tokenizers.Tokenizer` read from a folder's `tokenizer.json`
(its padding side, pad id and input names from `tokenizer_config.json`), giving the arrays a transformers fast
tokenizer gives. The ONNX predictor and the torch predictor's fast path both tokenize here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.errors import ModelError

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_FILE = "tokenizer.json"
# what TextEncoder produces: each model input and the `tokenizers.Encoding` attribute it is read from
ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
MODEL_INPUTS = tuple(ENCODING_FIELDS)
# encode_batch's thread pool costs more than it saves on a few short texts
SMALL_BATCH = 4


class TextEncoder:
    """A `tokenizers.Tokenizer` giving what a transformers fast tokenizer gives for
    ``tokenizer(texts, padding=True, truncation=True, max_length=...)``: int64 arrays padded to the longest text."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        max_length: int,
        input_names: tuple[str, ...] = MODEL_INPUTS,
        truncation_side: str = "right",
        padding_side: str = "right",
        pad_id: int = 0,
        pad_type_id: int = 0,
    ) -> None:
        # one tokenizer, owned by the encoder (a BERT vocabulary costs ~8 MB of memory a copy): it truncates, and
        # the pieces it cut off (`Encoding.overflowing`) give each text's full token count
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.specials = tokenizer.num_special_tokens_to_add(False)  # added to the overflowing pieces too
        self.input_names = tuple(input_names)
        self.truncation_side = truncation_side
        self.padding_side = padding_side
        self.pad_id = pad_id
        self.pad_type_id = pad_type_id
        self.truncate_at(max_length)

    def truncate_at(self, max_length: int) -> None:
        """Keep at most `max_length` tokens a text."""
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length, direction=self.truncation_side)

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int) -> TextEncoder:
        """The encoder of a model folder's `tokenizer.json` (and `tokenizer_config.json`), without transformers."""
        import tokenizers

        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise ModelError(
                f"{folder} has no {TOKENIZER_FILE}, which serving an ONNX folder needs (it runs without transformers); "
                'write it with: python -c "from transformers import AutoTokenizer; '
                f"AutoTokenizer.from_pretrained('SOURCE_CHECKPOINT').save_pretrained('{folder}')\""
            )
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ModelError(f"cannot read the tokenizer {path}: {str(exc).splitlines()[0]}") from exc
        config = read_json(folder / "tokenizer_config.json")
        pad_token = config.get("pad_token")
        pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
        saved_padding = tokenizer.padding or {}
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        names = tuple(config.get("model_input_names") or MODEL_INPUTS)
        return cls(
            tokenizer,
            max_length,
            input_names=tuple(name for name in names if name in MODEL_INPUTS),
            truncation_side=config.get("truncation_side", "right"),
            padding_side=config.get("padding_side", "right"),
            pad_id=pad_id if pad_id is not None else saved_padding.get("pad_id", 0),
        )

    @classmethod
    def from_transformers(cls, tokenizer: Any, max_length: int) -> TextEncoder | None:
        """The encoder of a transformers fast tokenizer; None for a slow one, or one with other inputs."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        names = tuple(getattr(tokenizer, "model_input_names", ()))
        if backend is None or not names or not set(names) <= set(MODEL_INPUTS):
            return None
        return cls(
            _copy_tokenizer(backend),  # a private copy: the settings the encoder makes must not leak to the caller
            max_length,
            input_names=names,
            truncation_side=tokenizer.truncation_side,
            padding_side=tokenizer.padding_side,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            pad_type_id=getattr(tokenizer, "pad_token_type_id", 0) or 0,
        )

    def encode(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[int]]:
        """Model inputs truncated to `max_length` and padded to the longest, and each text's token count before
        truncation (special tokens included)."""
        encodings = self._encodings(texts)
        counts = [self._full_count(e) for e in encodings]
        if len(encodings) == 1:  # batch 1, the latency path: nothing to pad, each array straight from its list
            fields = {name: getattr(encodings[0], ENCODING_FIELDS[name]) for name in self.input_names}
            return {name: np.array([values], dtype=np.int64) for name, values in fields.items()}, counts
        return self.padded_arrays(encodings), counts

    def padded_arrays(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        """The model inputs of `tokenizers.Encoding`s, padded to the longest on the tokenizer's padding side."""
        longest = max((len(e.ids) for e in encodings), default=0)
        padding = {"input_ids": self.pad_id, "token_type_ids": self.pad_type_id, "attention_mask": 0}
        shape = (len(encodings), longest)
        arrays = {name: np.full(shape, padding[name], dtype=np.int64) for name in self.input_names}
        for row, encoding in enumerate(encodings):
            size = len(encoding.ids)
            span = slice(0, size) if self.padding_side == "right" else slice(longest - size, longest)
            for name, array in arrays.items():
                array[row, span] = getattr(encoding, ENCODING_FIELDS[name])
        return arrays

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with special tokens, before truncation."""
        return [self._full_count(e) for e in self._encodings(texts)]

    def _encodings(self, texts: list[str]) -> list[Any]:
        texts = list(texts)
        if len(texts) <= SMALL_BATCH:
            return [self.tokenizer.encode(text) for text in texts]
        return self.tokenizer.encode_batch(texts)

    def _full_count(self, encoding: Any) -> int:
        # every piece cut off is post-processed like the first (its own special tokens): count its content only
        return len(encoding.ids) + sum(len(piece.ids) - self.specials for piece in encoding.overflowing)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, {} when it is absent; a one-line ModelError when it is unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _copy_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    import tokenizers

    return tokenizers.Tokenizer.from_str(tokenizer.to_str())
