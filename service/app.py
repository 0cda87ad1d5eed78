"""App factory. The lifespan owns the model version, the vLLM engine and the Redis pool, and closes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from service.api.errors import install_error_handlers
from service.api.middleware import RetrieveMetrics
from service.api.routes import router
from service.catalog.repo import ModelVersion, load_version, resolve_version_dir
from service.catalog.store import CatalogStore, connect
from service.deps import Services
from service.engine.engine import SidEngine
from service.engine.prompts import PromptBuilder
from service.metrics import Metrics
from service.readiness import Readiness
from service.retrieval import Retriever
from service.settings import Settings

log = logging.getLogger(__name__)
EngineFactory = Callable[[Settings, ModelVersion], Any]


async def _warm_up(retriever: Retriever, n: int) -> None:
    """vLLM's first requests after load are slow (allocations, caches); pay that before serving."""
    from service.engine.beam_search import sid_beam_search

    prompt = retriever.prompts.build("warm up", [])
    for _ in range(n):
        await sid_beam_search(
            retriever.engine, prompt, retriever.version.sid, retriever.settings.default_beam_width, retriever.trie
        )


def create_app(settings: Settings | None = None, engine_factory: EngineFactory = SidEngine.start) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        version = load_version(resolve_version_dir(settings.model_repo, settings.model_name, settings.model_version))
        log.info(
            "serving %s/%s (catalog %s, %d items)",
            version.model,
            version.version,
            version.catalog_version,
            version.item_count,
        )
        metrics = Metrics.create()
        redis = connect(
            settings.redis_url,
            cluster=settings.redis_cluster,
            timeout_s=settings.redis_timeout_s,
            pool_size=settings.redis_pool_size,
        )
        store = CatalogStore(redis, version.model, version.catalog_version)
        engine = engine_factory(settings, version)
        watcher: asyncio.Task[None] | None = None
        try:
            retriever = Retriever(settings, version, engine, PromptBuilder(version), store, version.trie, metrics)
            readiness = Readiness(version, store, engine, metrics, timeout_s=settings.redis_timeout_s)
            app.state.services = Services(settings, version, metrics, store, retriever, readiness)
            await _warm_up(retriever, settings.engine_warmup_queries)
            watcher = asyncio.create_task(readiness.watch(settings.catalog_watch_interval_s, settings.catalog_autoload))
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            engine.shutdown()
            await redis.aclose()

    app = FastAPI(
        title="gr-serve",
        summary="Generative retrieval: query/history -> Semantic IDs by trie-constrained beam search -> items",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    install_error_handlers(app)
    app.add_middleware(RetrieveMetrics)
    app.include_router(router)
    return app
