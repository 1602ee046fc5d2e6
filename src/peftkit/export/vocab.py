"""The tokenizer part of a GGUF model file: copied from the GGUF the base came from, or built from a
tokenizer folder.

Copying is exact: llama.cpp tokenizes as it did for the original file (its ``tokenizer.ggml.pre``
names the pre-tokenizer llama.cpp's converter recognized). A transformers tokenizer folder is
converted with the ``gguf`` package's vocabularies (GPT-2-style BPE or a Llama sentencepiece), with
llama.cpp's default pre-tokenizer.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["copy_tokenizer", "write_tokenizer"]


@functools.lru_cache(maxsize=2)
def _tokenizer_fields(source: str, mtime: float) -> tuple[tuple[str, Any, Any, Any], ...]:
    # gguf's reader parses every field of the file (seconds for 49k tokens): once per file and
    # version
    import gguf

    fields = []
    for key, field in gguf.GGUFReader(source).fields.items():
        if key.startswith("tokenizer."):
            main = gguf.GGUFValueType(field.types[0])
            sub = gguf.GGUFValueType(field.types[-1]) if main == gguf.GGUFValueType.ARRAY else None
            fields.append((key, field.contents(), main, sub))
    return tuple(fields)


def copy_tokenizer(writer: Any, source: Path, vocab_size: int) -> None:
    """Copy every ``tokenizer.*`` key of the GGUF file ``source``."""
    fields = _tokenizer_fields(str(source.resolve()), source.stat().st_mtime)
    for key, value, main, sub in fields:
        writer.add_key_value(key, value, main, sub_type=sub)
    tokens = next((value for key, value, _, _ in fields if key == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise ConfigError(
            f"{source} has no tokenizer (tokenizer.ggml.tokens); export without it, from the "
            f"model's tokenizer folder"
        )
    _check_size(len(tokens), vocab_size, str(source))


def _check_size(tokens: int, vocab_size: int, source: str) -> None:
    if tokens != vocab_size:
        raise ConfigError(
            f"the tokenizer of {source} has {tokens} tokens but the model's embedding has {vocab_size} "
            f"rows; llama.cpp needs them equal. Export with the tokenizer the model was trained "
            f"with (a resized vocabulary needs its own tokenizer folder)"
        )


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """Convert a transformers tokenizer (saved to a temporary folder first) into GGUF tokenizer
    keys."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        try:
            vocab: Any = gguf.vocab.BpeVocab(folder)
        except (FileNotFoundError, KeyError):
            try:
                vocab = gguf.vocab.LlamaHfVocab(folder)
            except (FileNotFoundError, TypeError, KeyError) as err:
                raise ConfigError(
                    f"cannot convert this tokenizer ({type(tokenizer).__name__}) to GGUF: neither a "
                    f"GPT-2-style BPE nor a Llama sentencepiece tokenizer ({err})"
                ) from err
        tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens(), strict=True))
        # embedding rows past the tokenizer's (padded vocabularies)
        for index in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{index}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        _check_size(len(tokens), vocab_size, "this tokenizer")
        writer.add_tokenizer_model(vocab.tokenizer_model)
        if vocab.tokenizer_model == "gpt2":
            writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(
            folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)
        )
        special.add_to_gguf(writer, quiet=True)
