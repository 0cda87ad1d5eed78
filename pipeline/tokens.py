"""Fixed token id layout of docs/model_repo.md: specials, then SID tokens level by level, then words."""

from __future__ import annotations

import string
from collections.abc import Sequence

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<history>", "<query>", "<sid>")
SPECIAL_IDS: dict[str, int] = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "history": 4, "query": 5, "sid": 6}
PAD, BOS, EOS, UNK, HISTORY, QUERY, SID = range(7)
FIRST_SID_ID = len(SPECIAL_TOKENS)


def level_names(length: int) -> list[str]:
    """Level names a, b, c, ... (the doc fixes this order; 26 levels is far more than any SID uses)."""
    if length > len(string.ascii_lowercase):
        raise ValueError(f"SID length {length} exceeds {len(string.ascii_lowercase)} levels")
    return list(string.ascii_lowercase[:length])


def token_offsets(codebook_sizes: Sequence[int]) -> list[int]:
    """Id of code 0 at each level; levels are contiguous, starting right after the specials."""
    offsets, nxt = [], FIRST_SID_ID
    for size in codebook_sizes:
        offsets.append(nxt)
        nxt += int(size)
    return offsets


def sid_tokens(codebook_sizes: Sequence[int]) -> list[str]:
    """All SID token strings in id order (`<a_0>`, `<a_1>`, ..., `<b_0>`, ...)."""
    names = level_names(len(codebook_sizes))
    return [f"<{names[lvl]}_{c}>" for lvl, size in enumerate(codebook_sizes) for c in range(int(size))]


def vocab_size(codebook_sizes: Sequence[int], n_words: int) -> int:
    return FIRST_SID_ID + sum(int(s) for s in codebook_sizes) + n_words
