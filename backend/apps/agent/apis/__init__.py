"""The agent app's HTTP endpoints, one module per resource (thin views: validate, call a service, serialize).

- `jobs`: POST/GET /api/agent/jobs, GET /api/agent/jobs/<id>, POST .../cancel, POST .../redeliver, POST /api/agent/;
- `batches`: POST/GET /api/agent/batches, GET /api/agent/batches/<id>, POST .../cancel, GET .../report;
- `system`: GET /api/ping, GET /api/health;
- `common`: the documented errors and headers, header parsing and the shared output serializers.
"""

from apps.agent.apis.batches import BatchCancelApi, BatchDetailApi, BatchListCreateApi, BatchReportApi
from apps.agent.apis.jobs import AgentSyncApi, JobCancelApi, JobDetailApi, JobListCreateApi, JobRedeliverApi
from apps.agent.apis.system import HealthApi, PingApi

__all__ = [
    "AgentSyncApi",
    "BatchCancelApi",
    "BatchDetailApi",
    "BatchListCreateApi",
    "BatchReportApi",
    "HealthApi",
    "JobCancelApi",
    "JobDetailApi",
    "JobListCreateApi",
    "JobRedeliverApi",
    "PingApi",
]
