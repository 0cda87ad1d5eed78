"""Methods vLLM adds to its worker (``worker_extension_cls``), so the gateway can reach the model between steps.

``AsyncLLM.collective_rpc("gr_apply_catalog_changes", args=(changes,))`` runs in the worker's busy loop, between
two engine steps: a step never sees half of a catalog change.
"""

from __future__ import annotations

from typing import Any

WORKER_EXTENSION = "service.engine.plugin.worker.CatalogWorkerExtension"


class CatalogWorkerExtension:
    def _catalog(self) -> Any:
        model_runner: Any = self.model_runner  # type: ignore[attr-defined]  # the vLLM worker this extends
        return model_runner.get_model().pooler.catalog

    def gr_apply_catalog_changes(self, changes: list[dict[str, Any]]) -> int:
        """Apply changes in revision order; returns the revision the next step will search."""
        return int(self._catalog().apply(changes))

    def gr_reset_catalog(self) -> int:
        return int(self._catalog().reset())

    def gr_catalog_revision(self) -> int:
        return int(self._catalog().revision)
