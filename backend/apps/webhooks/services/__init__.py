"""Webhook writes, one module per responsibility:

- `signing`: the user's signing secret (create, rotate), the secrets that sign now, the signature header;
- `payloads`: the JSON body of a job's or a batch's event;
- `events`: `webhook_url_validate` at submission, `event_enqueue` when a job or a batch ends;
- `http_attempt`: one signed POST to the checked address, with a capped response;
- `retry_policy`: what an attempt's result means, and when to try again;
- `sending`: `delivery_send` (claim, attempt, record) and the publishing of its task;
- `redelivery`: `delivery_redeliver` (asked by the owner) and `deliveries_sweep` (overdue rows).

The names below are the app's service API (`from apps.webhooks.services import event_enqueue`).
See docs/webhooks.md for the receiver's side.
"""

from apps.webhooks.services.events import event_enqueue, webhook_url_validate
from apps.webhooks.services.redelivery import deliveries_sweep, delivery_redeliver
from apps.webhooks.services.retry_policy import max_attempts
from apps.webhooks.services.sending import SendOutcome, delivery_send
from apps.webhooks.services.signing import secret_create_or_rotate

__all__ = [
    "SendOutcome",
    "deliveries_sweep",
    "delivery_redeliver",
    "delivery_send",
    "event_enqueue",
    "max_attempts",
    "secret_create_or_rotate",
    "webhook_url_validate",
]
