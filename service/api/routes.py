"""HTTP routes: thin; validation in the schemas, work in the retriever, errors in errors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import ORJSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.schemas import ErrorResponse, ReadyResponse, RetrieveRequest, RetrieveResponse
from service.deps import Services, get_services

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]

_ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorResponse} for code in (422, 500, 503, 504)}


@router.post("/retrieve", response_model=RetrieveResponse, responses=_ERRORS)
async def retrieve(body: RetrieveRequest, services: ServicesDep) -> RetrieveResponse:
    # latency, in-flight and outcome are recorded by service.api.middleware.RetrieveMetrics
    return await services.retriever.retrieve(body)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(services: ServicesDep) -> ORJSONResponse:
    state = await services.readiness.check()
    return ORJSONResponse(state.model_dump(), status_code=200 if state.ready else 503)


@router.get("/metrics")
async def metrics(request: Request, services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
