"""The API's JSON renderer: DRF's, for any text a request can bring back in its answer."""

from __future__ import annotations

from rest_framework import renderers


class _AsciiJSONRenderer(renderers.JSONRenderer):
    ensure_ascii = True


class JSONRenderer(renderers.JSONRenderer):
    """DRF's JSON renderer (UTF-8, not escaped), except for a body that UTF-8 cannot encode.

    JSON may carry a lone surrogate (`"\\ud800"`: valid JSON, not valid Unicode). DRF's fields refuse it as
    a value, but a validation error can echo it (an unknown field's name, a refused choice), and DRF's
    renderer then fails to encode its own answer: a 500 for bad input. Such a body is rendered with
    ASCII escapes instead (the same JSON, readable by any client).
    """

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return _AsciiJSONRenderer().render(data, accepted_media_type, renderer_context)
