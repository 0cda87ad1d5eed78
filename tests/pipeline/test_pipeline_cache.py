"""The SASRec/SFT weight cache of lever runs keys on everything SFT depends on, and nothing else."""

from __future__ import annotations

from pathlib import Path

from pipeline.build import BuildConfig, _sft_cache_path


def _key(**kw) -> Path | None:
    return _sft_cache_path(BuildConfig(out=Path("/x/ml100k/2"), sft_cache=Path("/c"), **kw), "ml", 10, 20)


def test_cache_key() -> None:
    assert _sft_cache_path(BuildConfig(out=Path("/x")), "ml", 10, 20) is None  # no cache dir: no cache
    base = _key()
    assert base is not None and base.parent == Path("/c")
    assert _key(align="rad-dpo") == base and _key(baselines=False) == base and _key(eval_next_users=5) == base
    assert _key(hidden=64) != base and _key(history=10) != base and _key(sid_collab_weight=1.0) != base
    assert _key(seed=1) != base and _key(threads=1) != base
    assert _sft_cache_path(BuildConfig(out=Path("/x"), sft_cache=Path("/c")), "ml", 11, 20) != base
