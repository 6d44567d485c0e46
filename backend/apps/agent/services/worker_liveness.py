"""Which worker processes are alive: a key per process in the shared Redis, renewed by a thread.

An attempt records the process that claimed it (`AgentJob.claimed_by`). Past its deadline plus
`AGENT_RUNNING_GRACE_SEC` an attempt is taken over (by the sweep or by a redelivered message) only when
that process's key has expired, i.e. it died (SIGKILL, OOM, machine lost), or, whatever its process,
`AGENT_RUNNING_HUNG_SEC` later still (a thread that hangs must not hold its job for ever). Before this, a
starved machine (or RabbitMQ redelivering every unacknowledged message after a restart) could take over
attempts that were alive but slow, until a job ran out of attempts (docs/reliability.md).

When Redis cannot tell (down, or the cache is not Redis), every process counts as gone: progress over
caution, as before. Processes that never started the thread (API, tests, eager tasks) record no name.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

from apps.agent.services.shared_cache import redis_client

logger = logging.getLogger(__name__)

#: The key is renewed this often and expires this long after the last renewal: a dead process is known
#: as such within ALIVE_TTL_SEC (well inside the default AGENT_RUNNING_GRACE_SEC of 15 s).
ALIVE_EVERY_SEC = 1.0
ALIVE_TTL_SEC = 5
KEY_PREFIX = "agent:worker-alive:"

_state: dict[str, object] = {"name": "", "pid": 0, "stop": None}
_lock = threading.Lock()


def process_name() -> str:
    """This process's name in the claims it makes: host and pid ("" until `alive_start` ran here)."""
    return str(_state["name"]) if _state["pid"] == os.getpid() else ""


def alive_start() -> str:
    """Start renewing this process's key (once per process; a forked child starts its own)."""
    with _lock:
        if _state["pid"] == os.getpid():
            return str(_state["name"])
        name = f"{socket.gethostname()}:{os.getpid()}"
        stop = threading.Event()
        _state.update(name=name, pid=os.getpid(), stop=stop)
    _renew(name)  # alive from the first claim on, not one interval later
    thread = threading.Thread(target=_renew_until, args=(name, stop), name="worker-alive", daemon=True)
    thread.start()
    return name


def alive_stop() -> None:
    """A clean shutdown: stop renewing and drop the key (its attempts ended or went back to the broker)."""
    with _lock:
        if _state["pid"] != os.getpid():
            return
        stop, name = _state["stop"], str(_state["name"])
        _state.update(name="", pid=0, stop=None)
    if isinstance(stop, threading.Event):
        stop.set()
    client = redis_client()
    if client is not None:
        try:
            client.delete(KEY_PREFIX + name)
        except Exception as exc:  # noqa: BLE001 - a missed delete expires in ALIVE_TTL_SEC
            logger.warning("could not drop the liveness key of %s (%s)", name, type(exc).__name__)


def alive_names(names: Iterable[str]) -> set[str]:
    """The given process names whose key is live; an empty set when Redis cannot tell."""
    wanted = sorted({name for name in names if name})
    client = redis_client()
    if not wanted or client is None:
        return set()
    try:
        values = client.mget([KEY_PREFIX + name for name in wanted])
    except Exception as exc:  # noqa: BLE001 - unknown counts as gone: the takeover rules of before
        logger.warning(
            "worker liveness unknown (%s): attempts past their grace are taken over", type(exc).__name__
        )
        return set()
    return {name for name, value in zip(wanted, values, strict=True) if value is not None}


def _renew(name: str) -> bool:
    client = redis_client()
    if client is None:
        return False
    try:
        client.set(KEY_PREFIX + name, "1", ex=ALIVE_TTL_SEC)
    except Exception as exc:  # noqa: BLE001 - retried at the next interval; meanwhile presumed gone
        logger.warning("could not renew the liveness key of %s (%s)", name, type(exc).__name__)
        return False
    return True


def _renew_until(name: str, stop: threading.Event) -> None:
    while not stop.wait(ALIVE_EVERY_SEC):
        started = time.monotonic()
        _renew(name)
        if time.monotonic() - started > ALIVE_TTL_SEC / 2:
            logger.warning("renewing the liveness key of %s took %.1f s", name, time.monotonic() - started)
