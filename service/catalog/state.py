"""The live catalog at one revision: the model version's items plus every change applied since (pure numpy).

The model-repository version is revision 0. Each change (``changes.py``) makes the next revision: a stock flip
(delist / relist), new attributes for an item, or a new item with its SID. The gateway and the engine process
build the same state from the same base and the same ordered changes, so a search and the answer mapping see
one revision, never a mix.

Attributes come from the catalog rows (every key but ``item_id`` and ``title``): lists and strings are
categorical (a list is multi-valued), numbers are numeric. A filter is any-of within a categorical attribute,
a range for a numeric one, all-of across attributes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.catalog.trie import SidTrie

if TYPE_CHECKING:
    from service.catalog.repo import ModelVersion, SidSpec

NON_ATTRIBUTES = ("item_id", "title")
RANGE_OPS = ("gte", "gt", "lte", "lt")


class FilterError(ValueError):
    """A filter names an unknown attribute or has the wrong shape for it; ``field`` says where."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class ChangeError(ValueError):
    """A change cannot apply to this revision (unknown item, SID already taken, ...)."""


@dataclass
class CatalogState:
    revision: int
    # int64 [N, L] in the search's extended form (repo.SidSpec.extend), catalog rows: version rows first, then
    # added items in revision order
    sids: np.ndarray
    item_ids: list[str]
    row_of: dict[str, int]
    live: np.ndarray  # bool [N]
    categorical: dict[str, dict[str, np.ndarray]]  # attribute -> value -> bool [N] (rows having it)
    numeric: dict[str, np.ndarray]  # attribute -> float64 [N], NaN where absent
    codebook_sizes: tuple[int, ...]  # the extended form's sizes (repo.SidSpec.search_sizes)
    trie: SidTrie = field(repr=False)
    spec: SidSpec | None = None  # to extend the SIDs of added items (None: they come extended)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (revision, why) of changes that could not apply

    # ------------------------------------------------------------------ construction
    @classmethod
    def of_version(cls, version: ModelVersion) -> CatalogState:
        """A version's catalog at revision 0."""
        state = cls.from_rows(version.read_items(), version.search_sids, version.sid.search_sizes)
        state.spec = version.sid
        return state

    @classmethod
    def from_rows(
        cls, rows: Sequence[Mapping[str, Any]], sids: np.ndarray, codebook_sizes: Sequence[int]
    ) -> CatalogState:
        sids = np.asarray(sids, dtype=np.int64)
        n = len(rows)
        item_ids = [str(r["item_id"]) for r in rows]
        state = cls(
            revision=0,
            sids=sids,
            item_ids=item_ids,
            row_of={item: i for i, item in enumerate(item_ids)},
            live=np.ones(n, dtype=bool),
            categorical={},
            numeric={},
            codebook_sizes=tuple(int(k) for k in codebook_sizes),
            trie=SidTrie.build(sids, codebook_sizes),
        )
        for i, row in enumerate(rows):
            state._set_attributes(i, {k: v for k, v in row.items() if k not in NON_ATTRIBUTES})
        return state

    def copy(self) -> CatalogState:
        """An independent copy (arrays and dicts copied; the trie is immutable and shared)."""
        return CatalogState(
            revision=self.revision,
            sids=self.sids.copy(),
            item_ids=list(self.item_ids),
            row_of=dict(self.row_of),
            live=self.live.copy(),
            categorical={a: {v: m.copy() for v, m in values.items()} for a, values in self.categorical.items()},
            numeric={a: c.copy() for a, c in self.numeric.items()},
            codebook_sizes=self.codebook_sizes,
            trie=self.trie,
            spec=self.spec,
            rejected=list(self.rejected),
        )

    # ------------------------------------------------------------------ changes
    def apply(self, changes: Iterable[Mapping[str, Any]]) -> CatalogState:
        """Apply changes in revision order (each must be this state's revision + 1), in place; returns self.

        New items are appended, then the trie is rebuilt once for the whole batch.
        """
        added = False
        self._batch_sids: set[tuple[int, ...]] = set()  # SIDs added in this batch (the trie has the older ones)
        for change in changes:
            rev = int(change["rev"])
            if rev <= self.revision:
                continue  # already applied (a replay overlapping the live stream)
            if rev != self.revision + 1:
                raise ChangeError(f"change {rev} out of order: this catalog is at revision {self.revision}")
            try:
                added |= self._apply_one(change)
            except ChangeError as e:
                # Written to the log but impossible here (e.g. an item unknown to this version): skip it the
                # same way in every process, and keep the record; the log must not stall behind it.
                self.rejected.append((rev, str(e)))
            self.revision = rev
        if added:
            self.trie = SidTrie.build(self.sids, self.codebook_sizes)
        return self

    def _apply_one(self, change: Mapping[str, Any]) -> bool:
        op, item = change["op"], str(change["item_id"])
        if op == "add":
            if item in self.row_of:
                raise ChangeError(f"item {item!r} already exists")
            sid = tuple(int(c) for c in change["sid"])
            if sid in self._batch_sids or bool(self.trie.contains(np.asarray([sid], dtype=np.int64))[0]):
                raise ChangeError(f"SID {list(sid)} is taken")
            self._append(item, sid)
            self._batch_sids.add(sid)
            self._set_attributes(self.row_of[item], change.get("attributes") or {})
            return True
        row = self.row_of.get(item)
        if row is None:
            raise ChangeError(f"item {item!r} is not in the catalog")
        if op in ("delist", "relist"):
            self.live[row] = op == "relist"
        elif op == "attributes":
            self._set_attributes(row, change.get("attributes") or {})
        else:
            raise ChangeError(f"unknown change {op!r}")
        return False

    def _append(self, item: str, sid: Sequence[int]) -> None:
        length = self.sids.shape[1]
        if self.spec is not None and self.spec.variable_length and 1 <= len(sid) < length:
            sid = self.spec.extend(np.asarray([[*sid, *([-1] * (length - len(sid)))]]))[0].tolist()
        codes = np.asarray(sid, dtype=np.int64).reshape(1, -1)
        if codes.shape[1] != length or (codes < 0).any() or (codes[0] >= self.codebook_sizes).any():
            raise ChangeError(f"SID {list(sid)} does not fit the codebooks {list(self.codebook_sizes)}")
        self.sids = np.concatenate([self.sids, codes])
        self.item_ids.append(item)
        self.row_of[item] = len(self.item_ids) - 1
        self.live = np.append(self.live, True)
        for values in self.categorical.values():
            for v in values:
                values[v] = np.append(values[v], False)
        for a in self.numeric:
            self.numeric[a] = np.append(self.numeric[a], np.nan)

    def _set_attributes(self, row: int, attributes: Mapping[str, Any]) -> None:
        n = len(self.item_ids)
        for name, value in attributes.items():
            # the row loses its old value(s) of this attribute first; None (or []) leaves it without one
            for member in self.categorical.get(name, {}).values():
                member[row] = False
            if name in self.numeric:
                self.numeric[name][row] = np.nan
            if value is None:
                continue
            if isinstance(value, (bool, str, list, tuple)):
                if name in self.numeric:
                    raise ChangeError(f"attribute {name!r} is numeric, got {value!r}")
                values = self.categorical.setdefault(name, {})
                for v in [value] if isinstance(value, (str, bool)) else value:
                    values.setdefault(str(v), np.zeros(n, dtype=bool))[row] = True
            elif isinstance(value, (int, float)):
                if name in self.categorical:
                    raise ChangeError(f"attribute {name!r} is categorical, got {value!r}")
                self.numeric.setdefault(name, np.full(n, np.nan))[row] = float(value)
            else:
                raise ChangeError(f"attribute {name!r}: unsupported value {value!r}")

    # ------------------------------------------------------------------ filters
    def attribute_kinds(self) -> dict[str, str]:
        kinds = {a: "categorical" for a in self.categorical}
        kinds.update({a: "numeric" for a in self.numeric})
        return kinds

    def validate_filters(self, filters: Mapping[str, Any] | None) -> None:
        """Raise ``FilterError`` (naming the field) unless every filter fits its attribute."""
        for name, spec in (filters or {}).items():
            where = f"filters.{name}"
            if name in self.categorical:
                if not isinstance(spec, list) or not spec or not all(isinstance(v, (str, int, bool)) for v in spec):
                    raise FilterError(f"{where}: give a non-empty list of values (any of them matches)", where)
            elif name in self.numeric:
                if not isinstance(spec, dict) or not spec or set(spec) - set(RANGE_OPS):
                    raise FilterError(f"{where}: give a range with any of {', '.join(RANGE_OPS)}", where)
                for op, bound in spec.items():
                    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                        raise FilterError(f"{where}.{op}: must be a finite number", f"{where}.{op}")
            else:
                known = ", ".join(sorted(self.attribute_kinds())) or "none"
                raise FilterError(f"{where}: unknown attribute (this catalog has: {known})", where)

    def allowed_rows(self, filters: Mapping[str, Any] | None) -> np.ndarray:
        """bool [N]: live rows that pass ``filters`` (validated first)."""
        self.validate_filters(filters)
        mask = self.live.copy()
        for name, spec in (filters or {}).items():
            if name in self.categorical:
                values = self.categorical[name]
                any_of = np.zeros_like(mask)
                for v in spec:
                    if str(v) in values:
                        any_of |= values[str(v)]
                mask &= any_of
            else:
                column = self.numeric[name]
                with np.errstate(invalid="ignore"):  # NaN (absent) never passes a range
                    for op, bound in spec.items():
                        mask &= _RANGE[op](column, bound)
        return mask


_RANGE = {
    "gte": np.greater_equal,
    "gt": np.greater,
    "lte": np.less_equal,
    "lt": np.less,
}
