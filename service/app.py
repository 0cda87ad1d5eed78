"""App factory. The lifespan owns the model version, the vLLM engine and the Redis pool, and closes them."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from redis.exceptions import RedisError

from service.admission import Admission
from service.api.errors import install_error_handlers
from service.api.guard import RequestGuard
from service.api.middleware import RetrieveMetrics
from service.api.routes import router
from service.catalog.changes import ChangeLog
from service.catalog.repo import ModelVersion, load_version, resolve_version_dir
from service.catalog.store import CatalogStore, connect
from service.catalog_sync import CatalogSync
from service.deps import Services
from service.engine.client import SearchEngine, start_engine
from service.engine.prompts import PromptBuilder
from service.failfast import FailFastGate
from service.metrics import Metrics
from service.pagination import Paginator
from service.readiness import Readiness
from service.retrieval import Retriever
from service.settings import Settings

log = logging.getLogger(__name__)
EngineFactory = Callable[[Settings, ModelVersion], SearchEngine]
# Exit status when the engine core died: the supervisor (service.stack, compose, Kubernetes) restarts us.
EXIT_ENGINE_DEAD = 75  # EX_TEMPFAIL; uvicorn itself uses 3 for a failed start-up


async def _warm_up(retriever: Retriever, n: int) -> None:
    """vLLM's first requests after load are slow (allocations, caches); pay that before serving."""
    prompt = retriever.prompts.build("warm up", [])
    for _ in range(n):
        await retriever.engine.search(prompt, retriever.settings.default_beam_width)


def _check_context(settings: Settings, version: ModelVersion, prompts: PromptBuilder) -> None:
    """Refuse to start when the longest prompt plus its SID would not fit the engine's context: every request
    must fit (queries and histories are cut to the manifest's limits, so this bound is exact)."""
    need = prompts.max_prompt_tokens + version.sid.length
    if need > settings.max_model_len:
        raise ValueError(f"GR_MAX_MODEL_LEN={settings.max_model_len} < {need} tokens (longest prompt + SID)")


async def _watch_engine(app: FastAPI, engine: SearchEngine, settings: Settings) -> None:
    """Exit the process (status 75) shortly after the engine core dies: vLLM cannot restart it in-process."""
    while not engine.dead:
        await asyncio.sleep(settings.engine_watch_interval_s)
    log.error(
        "vLLM engine core died: answering 503 for %.1fs, then exiting with status %d for a restart",
        settings.engine_exit_grace_s,
        EXIT_ENGINE_DEAD,
    )
    await asyncio.sleep(settings.engine_exit_grace_s)
    app.state.exit_code = EXIT_ENGINE_DEAD
    app.state.request_shutdown()


def create_app(settings: Settings | None = None, engine_factory: EngineFactory = start_engine) -> FastAPI:
    settings = settings or Settings()
    keys = settings.bearer_keys()  # read now: a broken key file fails the start, not the first request

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
        prompts = PromptBuilder(version)
        _check_context(settings, version, prompts)
        metrics = Metrics.create()
        redis = connect(
            settings.redis_url,
            cluster=settings.redis_cluster,
            timeout_s=settings.redis_timeout_s,
            pool_size=settings.redis_pool_size,
        )
        store = CatalogStore(redis, version.model, version.catalog_version)
        # The change follower blocks on Redis for up to catalog_follow_block_ms: its own connection, whose socket
        # timeout covers the block.
        follow_redis = connect(
            settings.redis_url,
            cluster=settings.redis_cluster,
            timeout_s=settings.redis_timeout_s + settings.catalog_follow_block_ms / 1000,
            pool_size=2,
        )
        engine = engine_factory(settings, version)
        tasks: list[asyncio.Task[None]] = []
        sync = CatalogSync(version, ChangeLog(follow_redis, version.model, version.catalog_version), engine, metrics)
        try:
            metrics.engine_requests_in_flight.set_function(lambda: engine.requests_in_flight)
            admission = Admission(settings.max_concurrent_beams, settings.retry_after_s, metrics)
            redis_gate = FailFastGate("catalog store (Redis)", settings.redis_fail_fast_s)
            retriever = Retriever(settings, version, engine, prompts, store, sync, metrics, admission, redis_gate)
            readiness = Readiness(version, store, engine, metrics, sync, settings.redis_timeout_s, redis_gate)
            paginator = Paginator(settings, retriever, store)
            app.state.services = Services(settings, version, metrics, store, retriever, readiness, admission, paginator)
            try:
                await sync.catch_up()  # serve the live catalog from the first request on
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("catalog changes not applied at start (%s); the follower keeps trying", type(e).__name__)
            await _warm_up(retriever, settings.engine_warmup_queries)
            # torch + vLLM leave ~700k long-lived objects; each full GC walked them all: ~0.85 s with the event
            # loop stopped, which showed as 0.5-1.2 s tails on 1 ms refusals under load (RELIABILITY.md).
            # Freezing them after start-up makes later collections scan only what serving allocates.
            gc.collect()
            gc.freeze()
            tasks.append(
                asyncio.create_task(readiness.watch(settings.catalog_watch_interval_s, settings.catalog_autoload))
            )
            tasks.append(asyncio.create_task(_watch_engine(app, engine, settings)))
            tasks.append(
                asyncio.create_task(sync.follow(settings.catalog_follow_block_ms, settings.catalog_heartbeat_s))
            )
            yield
        finally:
            # A stop must not hang: after an engine death the supervisor waits for this exit. Each step gets a
            # few seconds (a background task cancelled inside a Redis call over TLS was once seen to take 60 s).
            for task in tasks:
                task.cancel()
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*tasks, return_exceptions=True)
            except TimeoutError:
                log.warning("background tasks did not stop within 5s; leaving them")
            try:
                async with asyncio.timeout(5.0):
                    await sync.stop()
            except TimeoutError:
                log.warning("unregistering from the catalog change log took over 5s; skipped")
            engine.shutdown()
            for pool in (redis, follow_redis):
                try:
                    async with asyncio.timeout(5.0):
                        await pool.aclose()
                except TimeoutError:
                    log.warning("closing a Redis pool took over 5s; dropped")

    app = FastAPI(
        title="gr-serve",
        summary="Generative retrieval: query/history -> Semantic IDs by trie-constrained beam search -> items",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.exit_code = 0
    # python -m service replaces this with uvicorn's graceful stop; elsewhere (tests) nothing to stop
    app.state.request_shutdown = lambda: None
    install_error_handlers(app)
    # outermost last: RetrieveMetrics sees every /retrieve answer, the guard's refusals included
    app.add_middleware(
        RequestGuard, keys=keys, metrics_auth=settings.metrics_auth, max_body_bytes=settings.max_body_bytes
    )
    app.add_middleware(RetrieveMetrics)
    app.include_router(router)
    return app
