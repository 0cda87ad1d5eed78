"""Pages cut from one ranked list (service/pagination.py): no repeats, no gaps, and each page's certification."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.pagination import _page
from service.retrieval import Retrieval, RetrievedItem, certified


def ranked(scores: list[float], bound: float) -> Retrieval:
    items = [RetrievedItem(item_id=str(i), sid=[i], score=s) for i, s in enumerate(sorted(scores, reverse=True))]
    return Retrieval(items, "m/1", "cv", 3, 64, [], exact=certified(items, bound), score_bound=bound)


@given(
    scores=st.lists(st.floats(-20, 0), max_size=70),
    bound=st.one_of(st.just(float("-inf")), st.floats(-25, 0)),
    size=st.integers(1, 10),
)
def test_pages_cover_the_list_once_and_certify_only_items_above_the_bound(scores, bound, size) -> None:
    full = ranked(scores, bound)
    seen, offset, cursor = [], 0, "start"
    while cursor is not None:
        page = _page(full, "tok", offset, size)
        seen += page.items
        assert page.exact == (all(it.score > bound for it in page.items) if page.items else bound == float("-inf"))
        assert page.catalog_revision == 3
        cursor = page.next_cursor
        if cursor is not None:
            assert cursor.startswith("tok.")
            offset = int(cursor.rsplit(".", 1)[1])
        if not page.items:
            break
    assert seen == full.items
