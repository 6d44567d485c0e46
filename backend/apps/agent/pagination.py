"""Pagination of the API's lists: limit/offset, strictly validated, with a bounded page."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

from core.errors import ValidationFailed

MAX_PAGE = 100


class Pagination(LimitOffsetPagination):
    """DRF's limit/offset, except that a bad value is a 400 and a page holds at most `MAX_PAGE` rows.

    DRF silently replaces an unreadable `limit`/`offset` with the default (a client never learns its
    typo) and has no upper bound on `limit` (one request could read every row). A `limit` above the
    maximum is lowered to it, as documented.
    """

    max_limit = MAX_PAGE

    def get_limit(self, request) -> int:
        value = self._read(request, self.limit_query_param, minimum=1)
        return self.default_limit if value is None else min(value, self.max_limit)

    def get_offset(self, request) -> int:
        value = self._read(request, self.offset_query_param, minimum=0)
        return 0 if value is None else value

    @staticmethod
    def _read(request, name: str, *, minimum: int) -> int | None:
        values = request.query_params.getlist(name)
        if not values:
            return None
        raw = values[0]
        if len(values) > 1 or not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
            raise ValidationFailed(
                f"{name} must be one integer >= {minimum}.", details={name: [f"An integer >= {minimum}."]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view):
        limit, offset = super().get_schema_operation_parameters(view)
        limit["schema"] = {"type": "integer", "minimum": 1}
        limit["description"] = f"Number of results to return per page (at most {self.max_limit})."
        offset["schema"] = {"type": "integer", "minimum": 0}
        return [limit, offset]
