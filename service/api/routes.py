"""HTTP routes: thin; validation in the schemas, work in the retriever, errors in errors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import ORJSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.api.schemas import ErrorResponse, ReadyResponse, RetrieveRequest, RetrieveResponse
from service.deps import Services, get_services
from service.errors import InvalidRequest
from service.retrieval import RetrievalRequest

router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]

_ERROR_DOCS: dict[int, str] = {
    401: "Missing or invalid bearer token (only when the service has API keys).",
    413: "Body larger than GR_MAX_BODY_BYTES.",
    422: "Invalid request: the body is not JSON, or a field is invalid (named in `field`).",
    429: "Overloaded: the work in flight is at its bound. Nothing was done; retry after Retry-After seconds.",
    500: "Unexpected error (details in the service log, never in the response).",
    503: "A dependency is down: Redis, the catalog in Redis, or the engine (code says which).",
    504: "The deadline passed; the engine work was aborted.",
}
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in _ERROR_DOCS.items()
}
_ERRORS[429]["headers"] = {
    "Retry-After": {"description": "Seconds to wait before retrying here.", "schema": {"type": "integer"}}
}

TimeoutHeader = Annotated[
    int | None,
    Header(
        ge=1,
        description="This request's deadline in milliseconds, if shorter than the service's default "
        "(GR_REQUEST_TIMEOUT_S); longer asks are cut to GR_MAX_REQUEST_TIMEOUT_S. Past it: 504.",
    ),
]


@router.post("/retrieve", response_model=RetrieveResponse, responses=_ERRORS)
async def retrieve(
    body: RetrieveRequest, services: ServicesDep, x_request_timeout_ms: TimeoutHeader = None
) -> RetrieveResponse:
    # latency, in-flight and outcome are recorded by service.api.middleware.RetrieveMetrics
    if body.cursor is not None:
        extra = body.model_fields_set - {"cursor", "page_size"}
        if extra:
            raise InvalidRequest(
                f"a cursor continues an earlier search: send only cursor and page_size (not {sorted(extra)[0]})",
                sorted(extra)[0],
            )
        page = await services.paginator.next_page(body.cursor, body.page_size or services.settings.default_top_k)
        return RetrieveResponse.model_validate(page, from_attributes=True)
    request = RetrievalRequest(
        query=body.query,
        history=[str(h) for h in body.history],
        top_k=body.top_k,
        beam_width=body.beam_width,
        debug=body.debug,
        filters={
            name: spec.model_dump(exclude_none=True) if isinstance(spec, BaseModel) else spec
            for name, spec in body.filters.items()
        }
        if body.filters
        else None,
        exclude_items=[str(i) for i in body.exclude_items],
        exclude_history=body.exclude_history,
        timeout_s=None if x_request_timeout_ms is None else x_request_timeout_ms / 1000,
        exact=body.exact,
    )
    if body.page_size is not None:
        result = await services.paginator.first_page(request, body.page_size)
    else:
        result = await services.retriever.retrieve(request)
    return RetrieveResponse.model_validate(result, from_attributes=True)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(services: ServicesDep) -> ORJSONResponse:
    state = await services.readiness.check()
    return ORJSONResponse(state.model_dump(), status_code=200 if state.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
        401: {"model": ErrorResponse, "description": _ERROR_DOCS[401] + " Only with GR_METRICS_AUTH."},
    },
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
