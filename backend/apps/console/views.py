"""The console: a page where a signed-in user asks, watches a job stream in, cancels, and sees past jobs.

The page is served here; everything it shows comes from the public API (`fetch` and `EventSource` in
static/console/console.js), authenticated by the Django session. Nothing here reads or writes jobs.
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

#: Stands for the job id in the per-job URLs handed to the script.
_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"

#: Scripts, styles and connections from this origin only; no inline code, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _with_policy(response):
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response["Referrer-Policy"] = "same-origin"
    return response


@never_cache
@ensure_csrf_cookie  # the script reads the CSRF cookie and sends it as X-CSRFToken on POSTs
@login_required(login_url=reverse_lazy("console:login"))
def console_page(request):
    """The page. The API's URLs are handed to the script as data, so it builds none by hand."""
    api = {
        "jobs": reverse("agent-jobs"),
        # Per-job URLs: the script replaces the placeholder id with the job's.
        "job": reverse("agent-job-detail", args=[_PLACEHOLDER]),
        "cancel": reverse("agent-job-cancel", args=[_PLACEHOLDER]),
        "events": reverse("agent-job-events", args=[_PLACEHOLDER]),
        "placeholder": _PLACEHOLDER,
        "login": reverse("console:login"),
    }
    return _with_policy(render(request, "console/index.html", {"api": api}))


class ConsoleLoginView(auth_views.LoginView):
    """Django's login form, in the console's look; back to the console afterwards."""

    template_name = "console/login.html"
    redirect_authenticated_user = True
    next_page = reverse_lazy("console:index")

    def render_to_response(self, context, **kwargs):
        return _with_policy(super().render_to_response(context, **kwargs))


@method_decorator(never_cache, name="dispatch")
class ConsoleLogoutView(auth_views.LogoutView):
    """POST only (Django's rule): the page's sign-out button is a small form."""

    next_page = reverse_lazy("console:login")
