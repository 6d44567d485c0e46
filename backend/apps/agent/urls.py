from django.urls import include, path

from apps.agent import apis

urlpatterns = [
    path("ping", apis.PingApi.as_view(), name="ping"),
    path("health", apis.HealthApi.as_view(), name="health"),
    path("agent/", apis.AgentSyncApi.as_view(), name="agent-run"),
    path("agent/jobs", apis.JobListCreateApi.as_view(), name="agent-jobs"),
    path("agent/jobs/<uuid:job_id>", apis.JobDetailApi.as_view(), name="agent-job-detail"),
    path("agent/jobs/<uuid:job_id>/cancel", apis.JobCancelApi.as_view(), name="agent-job-cancel"),
    path("", include("apps.webhooks.urls")),
]
