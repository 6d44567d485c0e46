"""Request body parsing for the API: JSON only."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, plus a 400 for nesting deeper than Python's recursion limit.

    `json.load` raises `RecursionError` for a body such as `[[[[...]]]]` (a few kilobytes within the
    size limit), which would otherwise be an unhandled 500.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
