"""Request, response and error schemas of the HTTP API (the protocol; no logic here)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr | None = Field(None, description="Search text; may be omitted when history is given.")
    history: list[StrictStr | StrictInt] = Field(
        default_factory=list, description="The user's recent item ids, oldest first. Unknown ids are skipped."
    )
    top_k: StrictInt = Field(10, description="How many items to return (1..beam_width).")
    beam_width: StrictInt | None = Field(None, description="Beam width; default from settings, >= top_k.")
    debug: bool = Field(False, description="Add prompt token ids and the beams after each step.")


class RetrievedItem(BaseModel):
    item_id: str
    sid: list[int] = Field(description="The item's Semantic ID: one code per level.")
    score: float = Field(
        description="Sum over the SID's tokens of the log-probability of each token given the prompt and "
        "the previous tokens, each step's distribution renormalised over the tokens the trie allows."
    )


class DebugBeam(BaseModel):
    token_ids: list[int]
    score: float


class DebugInfo(BaseModel):
    prompt_token_ids: list[int]
    steps: list[list[DebugBeam]] = Field(description="Live beams after each decoding step.")
    engine_requests: int


class RetrieveResponse(BaseModel):
    items: list[RetrievedItem]
    model_version: str = Field(description="<model>/<version> of the served model repository.")
    catalog_version: str
    beam_width: int
    ignored_history: list[str] = Field(description="History item ids not in the catalog (skipped).")
    debug: DebugInfo | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ReadyResponse(BaseModel):
    ready: bool
    reasons: list[str] = Field(default_factory=list)
    model_version: str
    catalog_version: str
    redis_catalog_version: str | None = None
