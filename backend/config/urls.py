from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("apps.agent.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

# Under /api/, errors that never reach a DRF view keep the API's error shape (apps.core.http_errors).
handler400 = "apps.core.http_errors.bad_request"
handler404 = "apps.core.http_errors.page_not_found"
handler500 = "apps.core.http_errors.server_error"
