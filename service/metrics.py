"""Every Prometheus metric the service exports, on one registry owned by the app (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine buckets around the 150 ms objective so p50/p95/p99 can be read from the histogram.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.07,
    0.08,
    0.09,
    0.1,
    0.11,
    0.12,
    0.13,
    0.14,
    0.15,
    0.175,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
)
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    5.0,
)
# Refusals (429/401/413) must take well under 10 ms: resolve the sub-millisecond range.
REFUSAL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
SIZE_BUCKETS = (1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 256)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    request_latency: Histogram
    refusal_latency: Histogram
    stage_latency: Histogram
    requests: Counter
    in_flight: Gauge
    beam_width: Histogram
    top_k: Histogram
    invalid_sids: Counter
    ignored_history: Counter
    engine_requests: Counter
    ready: Gauge
    catalog_loads: Counter
    step_queries: Histogram
    catalog_revision: Gauge
    catalog_changes: Counter
    catalog_resets: Counter
    catalog_rejected: Counter
    admission_limit: Gauge
    admission_beams: Gauge
    admission_rejections: Counter
    engine_requests_in_flight: Gauge
    catalog_missing: Counter

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry(auto_describe=True)
        return cls(
            registry=r,
            request_latency=Histogram(
                "gr_request_latency_seconds",
                "End-to-end /retrieve latency inside the gateway (not of 401/413/429 refusals nor 499s).",
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            refusal_latency=Histogram(
                "gr_refusal_latency_seconds",
                "Latency inside the gateway of /retrieve refusals before any work (401, 413, 429).",
                buckets=REFUSAL_BUCKETS,
                registry=r,
            ),
            stage_latency=Histogram(
                "gr_stage_latency_seconds",
                "Latency of one stage of /retrieve.",
                ["stage"],
                buckets=STAGE_BUCKETS,
                registry=r,
            ),
            requests=Counter(
                "gr_requests_total",
                "Finished /retrieve requests by outcome and HTTP status.",
                ["outcome", "status"],
                registry=r,
            ),
            in_flight=Gauge("gr_requests_in_flight", "/retrieve requests being served now.", registry=r),
            beam_width=Histogram("gr_beam_width", "Beam width of served requests.", buckets=SIZE_BUCKETS, registry=r),
            top_k=Histogram("gr_top_k", "top_k of served requests.", buckets=SIZE_BUCKETS, registry=r),
            invalid_sids=Counter(
                "gr_invalid_sids_total",
                "SIDs returned by the engine that are not in the catalog (must stay 0).",
                registry=r,
            ),
            ignored_history=Counter(
                "gr_ignored_history_items_total", "History item ids unknown to the catalog.", registry=r
            ),
            engine_requests=Counter(
                "gr_engine_requests_total", "Requests submitted to the vLLM engine (beam steps).", registry=r
            ),
            ready=Gauge("gr_ready", "1 when /readyz would answer 200, else 0.", registry=r),
            catalog_loads=Counter(
                "gr_catalog_loads_total", "Catalog loads into Redis performed by this process.", registry=r
            ),
            catalog_revision=Gauge(
                "gr_catalog_revision", "Live-catalog revision this gateway and its engine serve.", registry=r
            ),
            catalog_changes=Counter(
                "gr_catalog_changes_applied_total", "Catalog changes applied (gateway and engine).", registry=r
            ),
            catalog_resets=Counter(
                "gr_catalog_resets_total",
                "Times Redis's change log went backwards (Redis lost data) and the catalog went back to the version's.",
                registry=r,
            ),
            catalog_rejected=Counter(
                "gr_catalog_changes_rejected_total",
                "Catalog changes in the log that could not apply to the served version (skipped; logged).",
                registry=r,
            ),
            step_queries=Histogram(
                "gr_engine_step_queries",
                "In-engine search: queries searched together in the engine step that served a request.",
                buckets=SIZE_BUCKETS,
                registry=r,
            ),
            admission_limit=Gauge(
                "gr_admission_limit_beams", "Admission bound: beams allowed in flight (0: unbounded).", registry=r
            ),
            admission_beams=Gauge(
                "gr_admission_beams_in_flight", "Beams of the admitted /retrieve requests in flight.", registry=r
            ),
            admission_rejections=Counter(
                "gr_admission_rejections_total", "/retrieve requests refused with 429 by admission control.", registry=r
            ),
            # Read from the engine at scrape time (bound in the app lifespan): orphaned engine work shows here.
            engine_requests_in_flight=Gauge(
                "gr_engine_requests_in_flight", "Requests inside the vLLM engine (unfinished) now.", registry=r
            ),
            catalog_missing=Counter(
                "gr_catalog_missing_total",
                "Requests that found Redis without this gateway's catalog (answered 503; reload triggered).",
                registry=r,
            ),
        )
