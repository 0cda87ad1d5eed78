"""Training examples and held-out requests: next-item (TIGER-style), search, personalised search."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.prompts import MAX_HISTORY_ITEMS


@dataclass(frozen=True)
class Request:
    query: str | None
    history: tuple[str, ...]
    target: str
    task: str  # "next_item" | "search" | "personalised_search"

    def to_json(self) -> dict:
        return {"query": self.query, "history": list(self.history), "target": self.target, "task": self.task}


@dataclass
class Splits:
    train: list[Request]  # per-example training requests (sampled next-item positions, search, personalised)
    eval_next: list[Request]  # last item per user (test)
    eval_search: list[Request]  # held-out query phrasings
    eval_personalised: list[Request]
    popularity: list[str]  # item ids by training-interaction count, most popular first
    # Training sequences, seq[:-2] per user (minus the validation item when `validation`): what the
    # baselines and the packed trainer learn from. Next-item targets are positions 1..len-1 of each.
    train_seqs: dict[str, list[str]] = field(default_factory=dict)
    next_positions: dict[str, list[int]] = field(default_factory=dict)  # sampled positions (per-example path)
    personalised: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # user -> [(position, query)]
    search: list[Request] = field(default_factory=list)  # search training requests (no history)
    valid_next: list[Request] = field(default_factory=list)  # validation: last training item per user
    valid_search: list[Request] = field(default_factory=list)  # validation: a spare training phrasing


def user_sequences(interactions: Sequence[tuple[str, str, int]], known: set[str]) -> dict[str, list[str]]:
    """Per-user item ids in time order; equal timestamps keep file order (deterministic)."""
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for n, (u, i, ts) in enumerate(interactions):
        if i in known:
            by_user.setdefault(u, []).append((ts, n, i))
    return {u: [i for _, _, i in sorted(v)] for u, v in sorted(by_user.items())}


_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def category_text(category: str | Sequence[str]) -> str:
    """An item's category as one string: a list of genres is joined by spaces ("Animation Comedy")."""
    return category if isinstance(category, str) else " ".join(str(c) for c in category)


def query_pool(item: Mapping[str, Any], rng: random.Random, n: int = 6) -> list[str]:
    """Distinct, shuffled query phrasings built only from the item's metadata (title words, genre words)."""
    title_words = _YEAR.sub("", item["title"]).lower().split()
    genres = category_text(item["category"]).lower().split()
    pool = {" ".join(title_words)}
    for _ in range(4 * n):
        k = rng.randint(1, max(1, min(3, len(title_words))))
        words = rng.sample(title_words, k) if title_words else []
        if genres and rng.random() < 0.5:
            words = [*words, rng.choice(genres)]
        if words:
            pool.add(" ".join(words))
    out = sorted(pool)
    rng.shuffle(out)
    return out[:n]


def make_splits(
    items: Sequence[Mapping[str, Any]],
    interactions: Sequence[tuple[str, str, int]],
    *,
    seed: int,
    max_next_per_user: int = 60,
    queries_per_item: int = 4,
    personalised_per_user: int = 3,
    eval_search_items: int = 500,
    eval_personalised_users: int = 300,
    validation: bool = False,
    valid_search_items: int = 500,
) -> Splits:
    """Leave-last-out splits. The random stream (query pools, held-out phrasings, sampled positions,
    personalised picks, eval users) does not depend on `validation`, so the eval requests are the same
    with and without it.

    validation: carve each user's last training item off as a validation target (history = the items
    before it); it is then no next-item or personalised training target. Search validation uses a spare
    phrasing of up to `valid_search_items` items (one never trained on, never an eval phrasing).
    """
    rng = random.Random(seed)
    by_id = {it["item_id"]: it for it in items}
    seqs = user_sequences(interactions, set(by_id))
    pools = {iid: query_pool(by_id[iid], rng) for iid in sorted(by_id)}
    eval_items = set(rng.sample(sorted(by_id), min(eval_search_items, len(by_id))))
    held_query = {i: pools[i][0] for i in sorted(eval_items) if len(pools[i]) > 1}

    train: list[Request] = []
    eval_next: list[Request] = []
    valid_next: list[Request] = []
    counts: Counter[str] = Counter()
    train_seqs: dict[str, list[str]] = {}
    next_positions: dict[str, list[int]] = {}
    personalised: dict[str, list[tuple[int, str]]] = {}
    for u, seq in seqs.items():
        # leave-last-out: seq[-1] = test, seq[-2] = validation (never trained on), seq[:-2] = training
        tr = seq[:-2] if len(seq) >= 3 else seq
        counts.update(tr)
        if len(seq) >= 3:
            eval_next.append(Request(None, tuple(seq[:-1][-MAX_HISTORY_ITEMS:]), seq[-1], "next_item"))
        positions = list(range(1, len(tr)))
        if len(positions) > max_next_per_user:
            positions = sorted(rng.sample(positions, max_next_per_user))
        pers = []
        for t in sorted(rng.sample(positions, min(personalised_per_user, len(positions)))):
            q = rng.choice([p for p in pools[tr[t]] if p != held_query.get(tr[t])] or pools[tr[t]])
            pers.append((t, q))
        fit = tr
        if validation and len(seq) >= 3 and len(tr) >= 2:
            fit = tr[:-1]
            valid_next.append(Request(None, tuple(fit[-MAX_HISTORY_ITEMS:]), tr[-1], "next_item"))
        positions = [t for t in positions if t < len(fit)]
        pers = [(t, q) for t, q in pers if t < len(fit)]
        train_seqs[u], next_positions[u], personalised[u] = fit, positions, pers
        train += [Request(None, tuple(fit[:t][-MAX_HISTORY_ITEMS:]), fit[t], "next_item") for t in positions]
        train += [Request(q, tuple(fit[:t][-MAX_HISTORY_ITEMS:]), fit[t], "personalised_search") for t, q in pers]
    search: list[Request] = []
    spare: list[Request] = []
    for iid in sorted(by_id):
        usable = [p for p in pools[iid] if p != held_query.get(iid)]
        search += [Request(q, (), iid, "search") for q in usable[:queries_per_item]]
        if validation and len(usable) > queries_per_item:
            spare.append(Request(usable[queries_per_item], (), iid, "search"))
    train += search
    valid_search = random.Random(seed + 1).sample(spare, min(valid_search_items, len(spare))) if spare else []
    eval_search = [Request(q, (), iid, "search") for iid, q in held_query.items()]
    users = [u for u in sorted(seqs) if len(seqs[u]) >= 3]
    eval_pers = []
    for u in rng.sample(users, min(eval_personalised_users, len(users))):
        seq = seqs[u]
        eval_pers.append(
            Request(
                rng.choice(pools[seq[-1]]),
                tuple(seq[:-1][-MAX_HISTORY_ITEMS:]),
                seq[-1],
                "personalised_search",
            )
        )
    popularity = [i for i, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
    popularity += [i for i in sorted(by_id) if i not in counts]
    return Splits(
        train,
        eval_next,
        eval_search,
        eval_pers,
        popularity,
        train_seqs=train_seqs,
        next_positions=next_positions,
        personalised=personalised,
        search=search,
        valid_next=valid_next,
        valid_search=valid_search,
    )


def vocabulary_words(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Query-word vocabulary: every title/category word (the tokenizer normalises and splits them)."""
    words: set[str] = set()
    for it in items:
        words.update(it["title"].lower().split())
        words.update(category_text(it["category"]).lower().split())
    return sorted(words)


def encode_example(
    req: Request, prompt_fn: Callable[[Request], list[int]], sid_ids: list[int], eos: int
) -> tuple[list[int], int]:
    """(token ids, prompt length): prompt + the target's L SID tokens + eos; loss covers only the latter."""
    prompt = prompt_fn(req)
    return prompt + sid_ids + [eos], len(prompt)
