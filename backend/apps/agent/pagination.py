"""Pagination of the API's lists: limit/offset, strictly validated, with a bounded page."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

from core.errors import ValidationFailed

MAX_PAGE = 100
# Far past any real table; it bounds the digits read (an int of any size would be read otherwise).
MAX_OFFSET = 10**18 - 1


class Pagination(LimitOffsetPagination):
    """DRF's limit/offset, except that a value out of its range is a 400 and a page holds at most
    `MAX_PAGE` rows.

    DRF silently replaces an unreadable `limit`/`offset` with the default (a client never learns its
    typo) and has no upper bound on `limit` (one request could read every row). The ranges are the ones
    the schema declares (minimum and maximum), so that the schema says exactly what is refused.
    """

    max_limit = MAX_PAGE

    def get_limit(self, request) -> int:
        value = self._read(request, self.limit_query_param, minimum=1, maximum=self.max_limit)
        return self.default_limit if value is None else value

    def get_offset(self, request) -> int:
        value = self._read(request, self.offset_query_param, minimum=0, maximum=MAX_OFFSET)
        return 0 if value is None else value

    @staticmethod
    def _read(request, name: str, *, minimum: int, maximum: int) -> int | None:
        values = request.query_params.getlist(name)
        if not values:
            return None
        raw = values[0]
        readable = len(values) == 1 and raw.isascii() and raw.isdigit() and len(raw) <= len(str(maximum))
        if not readable or not minimum <= int(raw) <= maximum:
            rule = f"An integer from {minimum} to {maximum}."
            raise ValidationFailed(
                f"{name} must be one integer from {minimum} to {maximum}.", details={name: [rule]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view):
        limit, offset = super().get_schema_operation_parameters(view)
        limit["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_limit}
        limit["description"] = f"Number of results to return per page (1 to {self.max_limit})."
        offset["schema"] = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}
        return [limit, offset]
