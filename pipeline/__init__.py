"""Offline pipeline that builds versions of the gr-serve model repository (see docs/model_repo.md)."""
