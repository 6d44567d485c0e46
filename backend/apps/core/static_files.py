"""WhiteNoise's middleware, made sync and async (settings.MIDDLEWARE).

WhiteNoise 6's middleware is sync only. Under the ASGI server Django runs a sync-only middleware, and
everything inside it, through a thread of the request's own: every open `?wait=` would hold a thread for
its whole wait. Finding a static file is a lookup in a dict built at start-up (a disk lookup with
`WHITENOISE_AUTOREFRESH`, in a thread then), so the async path needs no thread unless it serves a file.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
