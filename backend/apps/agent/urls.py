from django.urls import include, path

from apps.agent import apis
from apps.agent.apis import live

urlpatterns = [
    path("ping", apis.PingApi.as_view(), name="ping"),
    path("health", apis.HealthApi.as_view(), name="health"),
    path("agent/", apis.AgentSyncApi.as_view(), name="agent-run"),
    path("agent/jobs", apis.JobListCreateApi.as_view(), name="agent-jobs"),
    path("agent/jobs/<uuid:job_id>", live.job_detail, name="agent-job-detail"),
    path("agent/jobs/<uuid:job_id>/events", live.job_events_view, name="agent-job-events"),
    path("agent/jobs/<uuid:job_id>/cancel", apis.JobCancelApi.as_view(), name="agent-job-cancel"),
    path("agent/jobs/<uuid:job_id>/redeliver", apis.JobRedeliverApi.as_view(), name="agent-job-redeliver"),
    path("agent/batches", apis.BatchListCreateApi.as_view(), name="agent-batches"),
    path("agent/batches/<uuid:batch_id>", apis.BatchDetailApi.as_view(), name="agent-batch-detail"),
    path("agent/batches/<uuid:batch_id>/cancel", apis.BatchCancelApi.as_view(), name="agent-batch-cancel"),
    path("agent/batches/<uuid:batch_id>/report", apis.BatchReportApi.as_view(), name="agent-batch-report"),
    path("agent/usage", apis.UsageApi.as_view(), name="agent-usage"),
    path("agent/usage/users", apis.UsageListApi.as_view(), name="agent-usage-users"),
    path("", include("apps.webhooks.urls")),
]
