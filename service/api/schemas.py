"""Request, response and error schemas of the HTTP API (the protocol; no logic here)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class NumericRange(BaseModel):
    """A numeric attribute filter: every bound given must hold (items without the attribute never match)."""

    model_config = ConfigDict(extra="forbid")

    gte: StrictInt | StrictFloat | None = None
    gt: StrictInt | StrictFloat | None = None
    lte: StrictInt | StrictFloat | None = None
    lt: StrictInt | StrictFloat | None = None


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr | None = Field(None, description="Search text; may be omitted when history is given.")
    history: list[StrictStr | StrictInt] = Field(
        default_factory=list, description="The user's recent item ids, oldest first. Unknown ids are skipped."
    )
    top_k: StrictInt = Field(10, description="How many items to return (1..beam_width).")
    beam_width: StrictInt | None = Field(None, description="Beam width; default from settings, >= top_k.")
    debug: bool = Field(False, description="Add prompt token ids and the beams after each step.")
    filters: dict[StrictStr, list[StrictStr | StrictInt | StrictBool] | NumericRange] | None = Field(
        None,
        description="Attribute filters applied inside the search: a list of values for a categorical attribute "
        "(any of them), a range for a numeric one; every attribute must pass. E.g. "
        '{"category": ["Comedy", "Drama"], "year": {"gte": 1990}}.',
    )
    exclude_items: list[StrictStr | StrictInt] = Field(
        default_factory=list, description="Item ids the answer must not contain (e.g. the cart)."
    )
    exclude_history: bool = Field(False, description="Do not return the items given in history.")
    exact: bool = Field(
        False,
        description="Keep searching past the beam (best first, within GR_EXACT_BUDGET_ROWS) until the top_k is "
        "certified exact; the answer's `exact` says whether it was.",
    )
    page_size: StrictInt | None = Field(
        None,
        description="Paginate: this page's size. The first page (no cursor) searches to GR_PAGINATION_DEPTH "
        "items; `top_k` is not used.",
    )
    cursor: StrictStr | None = Field(
        None, description="The `next_cursor` of the previous page; send it (and page_size) alone."
    )


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
    steps: list[list[DebugBeam]] = Field(description="Live beams after each decoding step, best first.")
    engine_requests: int = Field(description="vLLM requests this query cost (1 in the in-engine search mode).")
    search_mode: str = Field(description='"engine" (the search ran inside one engine request) or "requests".')
    decoder_rows: int = Field(
        description="In-engine mode: beam tokens sent through the decoder (beams whose SID was already "
        "determined by the catalog cost none); 0 in requests mode."
    )


class RetrieveResponse(BaseModel):
    items: list[RetrievedItem]
    model_version: str = Field(description="<model>/<version> of the served model repository.")
    catalog_version: str
    catalog_revision: int = Field(
        description="Live-catalog revision the search used: the version's catalog plus that many changes."
    )
    matching_items: int | None = Field(
        None,
        description="Live items the search could return after filters and exclusions (in-engine search only). "
        "Fewer items than top_k come back only when fewer match; 0 means nothing matches.",
    )
    beam_width: int
    ignored_history: list[str] = Field(description="History item ids not in the catalog (skipped).")
    exact: bool = Field(
        description="The items are certified: no SID the search left out scores above any of them, so they are "
        "exactly the top of the model's ranking (ties aside)."
    )
    next_cursor: str | None = Field(None, description="Paginated requests: the cursor of the next page (None: last).")
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
    catalog_revision: int | None = Field(None, description="Live-catalog revision this gateway has applied.")
