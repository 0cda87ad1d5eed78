"""Loaders return the documented tables."""

from __future__ import annotations

from pathlib import Path

from pipeline.loaders import ML100kLoader, TableLoader


def test_ml100k() -> None:
    ds = ML100kLoader().load()
    assert len(ds.items) == 1682 and len(ds.interactions) == 100000
    assert len({i["item_id"] for i in ds.items}) == 1682
    assert ds.items[0]["title"] == "Toy Story (1995)"
    assert ds.items[0]["category"] == ["Animation", "Children's", "Comedy"] and ds.items[0]["year"] == 1995
    by_id = {i["item_id"]: i for i in ds.items}
    assert by_id["267"]["year"] is None and by_id["267"]["category"] == ["unknown"]  # the 'unkonwn' row
    assert by_id["1412"]["year"] == 1995  # release_year field is "V": the title's "(1995)" is used
    assert all(isinstance(i["category"], list) and i["category"] for i in ds.items)
    assert all(isinstance(ts, int) for _, _, ts in ds.interactions[:100])


def test_table_loader(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title,category,year\na,Alpha Beta,x|z,1999\nb,Gamma,y,\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\nu1,a,10\nu1,b,20\n")
    ds = TableLoader(tmp_path / "items.csv", tmp_path / "inter.csv").load()
    assert ds.items[0] == {"item_id": "a", "title": "Alpha Beta", "category": ["x", "z"], "year": 1999}
    assert ds.items[1] == {"item_id": "b", "title": "Gamma", "category": ["y"], "year": None}
    assert ds.interactions == [("u1", "a", 10), ("u1", "b", 20)]
