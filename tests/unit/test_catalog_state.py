"""The live catalog state (service/catalog/state.py) against a plain-Python reference of the same changes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.catalog.state import CatalogState, ChangeError, FilterError

GENRES = ["Comedy", "Drama", "Action", "Horror"]


def base_rows(n: int) -> tuple[list[dict], np.ndarray]:
    rows = [
        {"item_id": str(i), "title": f"t{i}", "category": [GENRES[i % 4], GENRES[(i * 7) % 4]], "year": 1980 + i}
        for i in range(n)
    ]
    sids = np.array([[i // 9, (i // 3) % 3, i % 3] for i in range(n)])
    return rows, sids


def reference_allowed(rows: list[dict], live: dict[str, bool], filters: dict) -> list[str]:
    out = []
    for r in rows:
        ok = live[r["item_id"]]
        for name, spec in filters.items():
            value = r.get(name)
            if isinstance(spec, list):
                values = value if isinstance(value, list) else [] if value is None else [value]
                ok &= any(str(v) in {str(x) for x in values} for v in spec)
            else:
                ok &= value is not None and all(
                    {"gte": value >= b, "gt": value > b, "lte": value <= b, "lt": value < b}[op]
                    for op, b in spec.items()
                )
        if ok:
            out.append(r["item_id"])
    return out


change_st = st.one_of(
    st.tuples(st.sampled_from(["delist", "relist"]), st.integers(0, 40)),
    st.tuples(st.just("attributes"), st.integers(0, 40), st.sampled_from(GENRES), st.integers(1970, 2030)),
    st.tuples(st.just("add"), st.integers(100, 140)),
)
filter_st = st.fixed_dictionaries(
    {},
    optional={
        "category": st.lists(st.sampled_from([*GENRES, "Nope"]), min_size=1, max_size=3),
        "year": st.dictionaries(st.sampled_from(["gte", "gt", "lte", "lt"]), st.integers(1975, 2030), min_size=1),
    },
)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 30), ops=st.lists(change_st, max_size=25), filters=filter_st)
def test_changes_and_filters_match_reference(n: int, ops: list, filters: dict) -> None:
    """Stock flips, attribute changes and new items, in order; changes to unknown items (and adds of known ones)
    are skipped and recorded, not fatal. The allowed rows of any filter match a direct evaluation."""
    rows, sids = base_rows(n)
    state = CatalogState.from_rows(rows, sids, (9, 3, 3))
    ref = {r["item_id"]: dict(r) for r in rows}
    live = {r["item_id"]: True for r in rows}
    changes, rejected = [], set()
    used = {tuple(s) for s in sids.tolist()}
    for rev, op in enumerate(ops, 1):
        item = str(op[1])
        if op[0] == "add":
            sid = (8, 2, op[1] % 3)  # often taken (by a base row or an earlier add): rejected, not fatal
            change = {"rev": rev, "op": "add", "item_id": item, "sid": list(sid), "attributes": {"category": ["Drama"]}}
            if item in ref or sid in used:
                rejected.add(rev)
            else:
                ref[item], live[item] = {"item_id": item, "category": ["Drama"], "year": None}, True
                used.add(sid)
        elif op[0] == "attributes":
            change = {
                "rev": rev,
                "op": "attributes",
                "item_id": item,
                "attributes": {"category": [op[2]], "year": op[3]},
            }
            if item in ref:
                ref[item].update(category=[op[2]], year=op[3])
            else:
                rejected.add(rev)
        else:
            change = {"rev": rev, "op": op[0], "item_id": item}
            if item in ref:
                live[item] = op[0] == "relist"
            else:
                rejected.add(rev)
        changes.append(change)
    state.apply(changes)
    assert state.revision == len(ops)
    assert {rev for rev, _ in state.rejected} == rejected
    got = [state.item_ids[i] for i in np.flatnonzero(state.allowed_rows(filters))]
    assert sorted(got) == sorted(reference_allowed(list(ref.values()), live, filters))
    assert state.trie.num_sids == len(state.item_ids) == len(used)  # every added SID is in the trie


def test_copy_is_independent_and_order_is_enforced() -> None:
    rows, sids = base_rows(6)
    state = CatalogState.from_rows(rows, sids, (9, 3, 3))
    other = state.copy().apply([{"rev": 1, "op": "delist", "item_id": "2"}])
    assert bool(state.live[2]) and not bool(other.live[2]) and state.revision == 0
    other.apply([{"rev": 1, "op": "delist", "item_id": "3"}])  # a replayed revision is skipped
    assert bool(other.live[3])
    with pytest.raises(ChangeError, match="out of order"):
        other.apply([{"rev": 3, "op": "relist", "item_id": "2"}])


def test_filter_errors_name_the_field() -> None:
    rows, sids = base_rows(4)
    state = CatalogState.from_rows(rows, sids, (9, 3, 3))
    for filters, field in (
        ({"colour": ["red"]}, "filters.colour"),
        ({"category": "Drama"}, "filters.category"),
        ({"category": []}, "filters.category"),
        ({"year": [1990]}, "filters.year"),
        ({"year": {"gte": float("nan")}}, "filters.year.gte"),
        ({"year": {"about": 3}}, "filters.year"),
    ):
        with pytest.raises(FilterError) as e:
            state.allowed_rows(filters)
        assert e.value.field == field
