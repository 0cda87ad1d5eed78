"""Loaders return the documented tables."""

from __future__ import annotations

from pathlib import Path

from pipeline.loaders import ML100kLoader, TableLoader


def test_ml100k() -> None:
    ds = ML100kLoader().load()
    assert len(ds.items) == 1682 and len(ds.interactions) == 100000
    assert len({i["item_id"] for i in ds.items}) == 1682
    assert ds.items[0]["title"].startswith("Toy Story") and "Animation" in ds.items[0]["category"]
    assert all(isinstance(ts, int) for _, _, ts in ds.interactions[:100])


def test_table_loader(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title,category\na,Alpha Beta,x\nb,Gamma,y\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\nu1,a,10\nu1,b,20\n")
    ds = TableLoader(tmp_path / "items.csv", tmp_path / "inter.csv").load()
    assert ds.items[1] == {"item_id": "b", "title": "Gamma", "category": "y"}
    assert ds.interactions == [("u1", "a", 10), ("u1", "b", 20)]
