"""Dataclasses that flow through the agent pipeline. Plain data: no Django, no Celery."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Filters:
    """Retrieval filters. Empty values mean "no filter"."""

    language: str | None = None
    genres: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Filters:
        data = data or {}
        genres = data.get("genres") or ()
        if isinstance(genres, str):
            genres = (genres,)
        return cls(
            language=data.get("language") or None,
            genres=tuple(genres),
            year_min=data.get("year_min"),
            year_max=data.get("year_max"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.language:
            out["language"] = self.language
        if self.genres:
            out["genres"] = list(self.genres)
        if self.year_min is not None:
            out["year_min"] = self.year_min
        if self.year_max is not None:
            out["year_max"] = self.year_max
        return out


@dataclass(frozen=True)
class Document:
    """One item of a dataset to index: an id, the text to embed, and metadata to filter on."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One retrieved book. `score` is a similarity in [0, 1] for vector hits, a keyword score for exact hits."""

    id: str
    title: str
    author: str
    year: int | None
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TraceStep:
    """One step of a run, as stored and shown to the client."""

    name: str
    started_at: str
    duration_ms: float
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The fields of a trace step, in order: the one definition that the model (`apps.agent.models.TraceStep`,
#: which adds job, attempt and position), the selector and the serializer derive theirs from.
TRACE_STEP_FIELDS = tuple(f.name for f in fields(TraceStep))


@dataclass
class AgentResult:
    """The seed's response contract: message, results[], actions[], trace, error (+ degraded)."""

    message: str
    results: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    trace: list[TraceStep]
    error: dict[str, Any] | None = None
    degraded: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "results": self.results,
            "actions": self.actions,
            "trace": [step.to_dict() for step in self.trace],
            "error": self.error,
            "degraded": self.degraded,
        }


@dataclass(frozen=True)
class AgentOptions:
    """What the client may tune per job."""

    top_k: int = 5
    filters: Filters = field(default_factory=Filters)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AgentOptions:
        data = data or {}
        return cls(top_k=int(data.get("top_k") or 5), filters=Filters.from_dict(data.get("filters")))

    def to_dict(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "filters": self.filters.to_dict()}
