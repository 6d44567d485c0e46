"""The trace-step row is the core's `agent.types.TraceStep` plus job, attempt and position."""

import dataclasses
import types as pytypes
import typing

from agent import types
from apps.agent.models import TraceStep

ROW_ONLY = {"id", "job", "attempt", "position"}


def test_the_row_has_exactly_the_core_fields_plus_its_place():
    columns = {field.name for field in TraceStep._meta.concrete_fields}

    assert columns - ROW_ONLY == set(types.TRACE_STEP_FIELDS)


def test_a_field_is_nullable_exactly_when_the_core_field_is_optional():
    hints = typing.get_type_hints(types.TraceStep)
    for field in dataclasses.fields(types.TraceStep):
        hint = hints[field.name]
        optional = isinstance(hint, pytypes.UnionType) and type(None) in hint.__args__
        assert TraceStep._meta.get_field(field.name).null is optional, field.name


def test_from_step_copies_every_core_field():
    step = types.TraceStep(
        name="llm",
        started_at="2026-01-01T00:00:00+00:00",
        duration_ms=1.5,
        inputs={"a": 1},
        outputs={"b": 2},
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=0.5,
        error={"code": "x"},
    )

    row = TraceStep.from_step(step, job_id=None, attempt=2, position=1)

    assert {name: getattr(row, name) for name in types.TRACE_STEP_FIELDS} == dataclasses.asdict(step)
    assert (row.attempt, row.position) == (2, 1)
