"""The engine's view of the live catalog: one revision of ``CatalogState``, its trie on the device, and the
allowed-leaf prefix counts of the filters in use.

Changes arrive through ``CatalogWorkerExtension`` (a vLLM collective RPC), which vLLM runs between engine steps:
a step searches one whole revision, never half of a change. New items rebuild the trie (and every leaf-indexed
array) before the next step; stock flips and attribute changes only invalidate the cached filter counts.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from service.catalog.search_trie import LeafFilter, SearchTrie
from service.catalog.state import CatalogState


class LiveCatalog:
    def __init__(self, base: CatalogState, device: torch.device, cache_bytes: int = 256 << 20):
        self.base = base.copy()  # the version's catalog (revision 0), for ``reset``
        self.state = base
        self.device = device
        # Each cached filter costs (N + 1) int32 prefix counts; keep at most ``cache_bytes`` of them.
        self.cache_entries = max(4, cache_bytes // (4 * (len(base.item_ids) + 1)))
        self._prefix: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._index()

    def _index(self) -> None:
        self.trie = SearchTrie(self.state.trie, self.device)
        leaf_rows = self.state.trie.leaf_rows
        self.leaf_rows = torch.from_numpy(leaf_rows).to(self.device)
        self._prefix.clear()

    @property
    def revision(self) -> int:
        return self.state.revision

    def apply(self, changes: Sequence[Mapping[str, Any]]) -> int:
        trie = self.state.trie
        self.state.apply(changes)
        if self.state.trie is not trie:
            self._index()  # new items: leaves were renumbered
        else:
            self._prefix.clear()  # live flags or attributes changed
        return self.state.revision

    def reset(self) -> int:
        self.state = self.base.copy()
        self._index()
        return 0

    def prefix(self, filters: Mapping[str, Any] | None) -> torch.Tensor:
        """int32 [N + 1] prefix counts, in leaf order, of the live items passing ``filters`` (cached)."""
        key = json.dumps(filters or {}, sort_keys=True)
        hit = self._prefix.get(key)
        if hit is not None:
            self._prefix.move_to_end(key)
            return hit
        rows = torch.from_numpy(self.state.allowed_rows(filters)).to(self.device)
        out = torch.zeros(len(self.state.item_ids) + 1, dtype=torch.int32, device=self.device)
        out[1:] = torch.cumsum(rows[self.leaf_rows].to(torch.int32), 0)
        self._prefix[key] = out
        if len(self._prefix) > self.cache_entries:
            self._prefix.popitem(last=False)
        return out

    def leaf_filter(
        self, filters: Sequence[Mapping[str, Any] | None], excluded_sids: Sequence[Sequence[Sequence[int]]]
    ) -> tuple[LeafFilter | None, list[int]]:
        """The step's ``LeafFilter`` (None when every query may reach every SID) and each query's allowed count."""
        everything = bool(self.state.live.all())
        if everything and not any(filters) and not any(excluded_sids):
            return None, [len(self.state.item_ids)] * len(filters)
        keys = [json.dumps(f or {}, sort_keys=True) for f in filters]
        distinct = list(dict.fromkeys(keys))
        rows_of = [self.prefix(filters[keys.index(k)]) for k in distinct]
        prefix = rows_of[0][None] if len(rows_of) == 1 else torch.stack(rows_of)  # one filter: a view, no copy
        row_of_query = [distinct.index(k) for k in keys]
        n = len(self.state.item_ids)
        per_query = []
        for q, sids in enumerate(excluded_sids):
            p = prefix[row_of_query[q]]
            # subtract only leaves the filter allows (each once)
            per_query.append(sorted({int(x) for x in self._leaves(sids) if p[x + 1] > p[x]}))
        width = max((len(e) for e in per_query), default=0)
        excluded = None
        if width:
            excluded = torch.full((len(per_query), width), n, dtype=torch.long, device=self.device)
            for q, kept in enumerate(per_query):
                excluded[q, : len(kept)] = torch.tensor(kept, dtype=torch.long)
        counts = [int(prefix[r, -1]) - len(e) for r, e in zip(row_of_query, per_query, strict=True)]
        rows = torch.tensor(row_of_query, dtype=torch.long, device=self.device)
        return LeafFilter(prefix, rows, excluded), counts

    def _leaves(self, sids: Sequence[Sequence[int]]) -> np.ndarray:
        """Leaf ids of the catalog SIDs among ``sids`` (others are ignored)."""
        length = self.state.trie.sid_length
        rows = [[*s, *([-1] * (length - len(s)))] for s in sids if 1 <= len(s) <= length]
        if not rows:
            return np.empty(0, dtype=np.int64)
        spec = self.state.spec
        codes = spec.extend(np.asarray(rows)) if spec is not None else np.asarray(rows, dtype=np.int64)
        if (codes < 0).any():  # a short SID of a fixed-length catalog: not a catalog SID
            codes = codes[(codes >= 0).all(axis=1)]
        nodes = self.state.trie.walk(codes)
        return nodes[nodes >= 0]  # a depth-L node id is its leaf id
