"""Tokenizer files in the released format, for synthetic checkpoints.

The released tokenizer is a tiktoken BPE with 151,643 ranks followed by the special tokens and
the ``<|semantic:i|>`` tokens. A synthetic one keeps that layout and those ids: the 256 single
bytes, then lowercase/space strings in length order, so every multi-byte rank can be reached by
merges of lower ranks and English text encodes into a sensible number of tokens.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

from fish_speech.tokenizer import ALL_SPECIAL_TOKENS, SEMANTIC_TOKEN_TEMPLATE

ALPHABET = " etaoinshrdlcumwfgypbvkjxqz"
BASE_SPECIAL_TOKENS = [t for t in ALL_SPECIAL_TOKENS if not t.startswith("<|semantic:")]


def synthetic_ranks(n_ranks: int) -> list[bytes]:
    """The first ``n_ranks`` mergeable byte strings, in rank order."""
    ranks = [bytes([b]) for b in range(256)]
    for length in itertools.count(2):
        for chars in itertools.product(ALPHABET, repeat=length):
            if len(ranks) >= n_ranks:
                return ranks
            ranks.append("".join(chars).encode())
    raise AssertionError("unreachable")


def special_tokens(n_ranks: int, n_semantic: int) -> dict[str, int]:
    """Special token ids exactly as upstream numbers them: right after the BPE ranks."""
    names = BASE_SPECIAL_TOKENS + [SEMANTIC_TOKEN_TEMPLATE.format(i=i) for i in range(n_semantic)]
    return {name: n_ranks + i for i, name in enumerate(names)}


def write_tokenizer(folder: Path, n_ranks: int, n_semantic: int) -> int:
    """Write ``tokenizer.tiktoken`` and ``special_tokens.json``; return the id count."""
    with (folder / "tokenizer.tiktoken").open("w") as handle:
        for rank, token in enumerate(synthetic_ranks(n_ranks)):
            handle.write(f"{base64.b64encode(token).decode()} {rank}\n")
    specials = special_tokens(n_ranks, n_semantic)
    (folder / "special_tokens.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False))
    return n_ranks + len(specials)
