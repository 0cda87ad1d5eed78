"""Prompt assembly exactly as docs/model_repo.md specifies (the service has its own copy; must agree)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pipeline.tokens import BOS, HISTORY, QUERY, SID

MAX_HISTORY_ITEMS = 20
MAX_QUERY_TOKENS = 32
PROMPT_TEMPLATE = "<bos> <history> {SID tokens of each history item, oldest first} <query> {query word tokens} <sid>"


def assemble_prompt(
    history: Sequence[str],
    query: str | None,
    *,
    item_to_sid: Mapping[str, Sequence[int]],
    encode: Callable[[str], list[int]],
    token_offsets: Sequence[int],
    max_history_items: int = MAX_HISTORY_ITEMS,
    max_query_tokens: int = MAX_QUERY_TOKENS,
) -> list[int]:
    """Token ids of one request's prompt.

    history: item ids, oldest first; ids not in the catalog are dropped *before* keeping the most recent
    `max_history_items` (so unknown ids never use up history slots).
    encode: `tokenizer.encode(text, add_special_tokens=False)` -> ids; the first `max_query_tokens` are kept.
    A None/empty query yields no query tokens, but the `<query>` marker is always present.
    """
    known = [item_to_sid[i] for i in history if i in item_to_sid]
    known = [] if max_history_items <= 0 else known[-max_history_items:]
    ids = [BOS, HISTORY]
    for sid in known:
        ids.extend(sid_to_token_ids(sid, token_offsets))
    ids.append(QUERY)
    if query:
        ids.extend(encode(query)[:max_query_tokens])
    ids.append(SID)
    return ids


def sid_to_token_ids(sid: Sequence[int], token_offsets: Sequence[int]) -> list[int]:
    """A SID's tokens; the -1 padding after the last code of a variable-length SID has none."""
    if len(sid) > len(token_offsets):
        raise ValueError(f"SID {tuple(sid)} is longer than the {len(token_offsets)} levels")
    return [int(off) + int(code) for off, code in zip(token_offsets, sid, strict=False) if int(code) >= 0]
