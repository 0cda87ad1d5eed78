"""Typed access to the collaborators the app lifespan put on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from service.admission import Admission
from service.catalog.repo import ModelVersion
from service.catalog.store import CatalogStore
from service.metrics import Metrics
from service.pagination import Paginator
from service.readiness import Readiness
from service.retrieval import Retriever
from service.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    version: ModelVersion
    metrics: Metrics
    store: CatalogStore
    retriever: Retriever
    readiness: Readiness
    admission: Admission
    paginator: Paginator


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
