"""A cluster on one machine: what several machines would run, as separate processes on loopback.

    python -m bench.cluster [--broker redis|rabbitmq] [--jobs 2000]

Starts PostgreSQL databases of its own (a copy of a migrated template on the machine's PostgreSQL), a
Chroma server (`chroma run`) over the catalogue's store, a broker of its own (a private redis-server or a
private RabbitMQ node, on free ports, so that it may restart it), 2 API processes (gunicorn), 3 worker
processes with different queues (`agent`; `agent,batch` with beat; `webhooks`), the OpenAI-compatible
test server and a webhook receiver. It submits `--jobs` jobs through both APIs, each with a webhook, and
meanwhile SIGKILLs the `agent` worker and restarts it, and restarts the broker once. Then it checks from
the database and the receiver that every job ended exactly once: no answer lost (every job `succeeded`),
none duplicated (one attempt's trace per job), one webhook per job (by job id and by `webhook-id`). It
prints jobs/s and the counts, and exits 1 when anything was lost or duplicated.

Results and the cache stay on the run's Redis database (bench/stack.py) whatever the broker.
tests/faults/test_cluster.py runs it on both brokers; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.brokers import PrivateRabbit, PrivateRedis
from bench.stack import BACKEND, PY, QUERIES, VECTOR_DIR, Stack, Template, _http_ok, free_port, log, temp_root

#: Fast recovery, as the fault tests use: the sweep runs every 2 s and presumes an attempt lost 2 s after
#: its deadline; webhooks not delivered within 15 s are re-enqueued.
CLUSTER_ENV = {
    "AGENT_JOB_TIMEOUT_SEC": "15",
    "AGENT_SWEEP_INTERVAL_SEC": "2",
    # A running attempt is presumed lost 10 s after its deadline: 2 s took over live attempts that a starved
    # machine (load average 20-28) had not finished writing, until some jobs ran out of attempts.
    "AGENT_RUNNING_GRACE_SEC": "10",
    "AGENT_QUEUED_STALE_SEC": "20",
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "WEBHOOK_SWEEP_INTERVAL_SEC": "5",
    "WEBHOOK_SWEEP_OVERDUE_SEC": "15",
    "WEBHOOK_RETRY_SCHEDULE": "1s,2s,5s,10s,20s",
}
#: The three workers: name -> (queues, concurrency, extra arguments).
WORKERS = {
    "agent": ("agent", "100", []),
    "mixed": ("agent,batch", "100", ["--beat", "--schedule"]),
    "hooks": ("webhooks", "50", []),
}
TERMINAL = ("succeeded", "failed", "cancelled")
#: What the workers log when an attempt is taken over, dropped, out of attempts or handed back.
TAKEOVER_KINDS = (
    "queued again",
    "takes over",
    "no longer its own",
    "max_attempts",
    "handed back",
    "undone",
    "database error while running job",
)
#: How long after the last job ended every webhook must have arrived (docs/reliability.md, "Webhooks"):
#: a delivery whose message was lost is re-sent by the sweep within WEBHOOK_SWEEP_OVERDUE_SEC +
#: WEBHOOK_SWEEP_INTERVAL_SEC of being due, one whose attempt died with its worker once its lease
#: (WEBHOOK_ATTEMPT_DEADLINE_SEC 15 + 30 s) has expired, and an attempt lasts WEBHOOK_ATTEMPT_DEADLINE_SEC
#: at most: 45 + 5 + 15 = 65 s once the broker and the workers are back. A worker that the broker restart
#: ended must first be restarted by the supervisor and boot (up to a minute on a loaded machine): 180 s.
WEBHOOKS_BOUND_SEC = 180


def _request(method: str, url: str, token: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Token {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


class Cluster:
    def __init__(self, stack: Stack, broker: PrivateRedis | PrivateRabbit, tmp: Path):
        self.stack, self.broker, self.tmp = stack, broker, tmp
        self.apis: list[tuple[object, str]] = []
        self.workers: dict[str, object] = {}
        self.every_worker: list[object] = []  # restarted ones too: their logs tell the takeovers
        self.events: list[str] = []
        self.unplanned_exits = 0
        self.started = time.monotonic()

    def note(self, event: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f} s  {event}"
        self.events.append(line)
        log(line)

    def start_chroma(self) -> None:
        path = self.tmp / "chroma"
        shutil.copytree(VECTOR_DIR, path)
        port = free_port()
        chroma = shutil.which("chroma", path=str(Path(PY).parent)) or "chroma"
        proc = self.stack._spawn(
            "chroma", [chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
        )
        proc.ready = lambda: _http_ok(f"http://127.0.0.1:{port}/api/v2/heartbeat")
        proc.wait_ready()
        self.stack.env["VECTOR_DB_URL"] = f"http://127.0.0.1:{port}"

    def start_worker(self, name: str) -> None:
        queues, concurrency, extra = WORKERS[name]
        if extra:
            extra = [*extra, str(self.tmp / f"beat-{name}")]
        proc = self.stack._spawn(
            f"worker-{name}-{len(self.events)}",
            [
                PY, "-m", "celery", "-A", "config.celery_app", "worker", "--pool", "threads",
                "--concurrency", concurrency, "--queues", queues, "--hostname", f"{name}@cluster",
                "--without-mingle", "--without-gossip", *extra,
            ],
        )  # fmt: skip
        self.workers[name] = proc
        self.every_worker.append(proc)

    def log_lines(self, text: str) -> list[str]:
        return [
            f"{proc.name}: {line.strip()}"
            for proc in self.every_worker
            for line in proc.log_tail(10_000_000).splitlines()
            if text in line
        ]

    def takeovers(self) -> list[str]:
        """The workers' lines about attempts presumed lost, taken over, dropped, out of attempts or handed back."""
        return [line for line in self.log_lines("job ") if any(kind in line for kind in TAKEOVER_KINDS)]

    def supervise(self) -> None:
        """Restart a worker that exited, as a process supervisor (compose `restart:`, systemd) would: what
        is left of it (its embedded beat outlives it) is stopped first, as a container's restart does."""
        for name, proc in list(self.workers.items()):
            if not proc.alive():
                tail = [line for line in proc.log_tail(20000).splitlines() if "Unrecoverable error" in line]
                proc.stop()
                self.unplanned_exits += 1
                self.note(
                    f"worker {name} exited by itself ({proc.popen.returncode}): {tail[-1:] or 'see its log'}"
                )
                self.start_worker(name)
                self.note(f"worker {name} restarted by the supervisor")

    def wait_workers(self) -> None:
        from celery import Celery

        app = Celery("cluster", broker=self.broker.url)
        deadline = time.monotonic() + 180
        for name, proc in self.workers.items():
            while not app.control.ping(destination=[f"{name}@cluster"], timeout=1):
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not start:\n{proc.log_tail()}")

    def start(self) -> None:
        self.stack.env.update(CLUSTER_ENV, CELERY_BROKER_URL=self.broker.url)
        self.stack.start_llm_server(50)
        self.start_chroma()
        for _ in range(2):
            proc = self.stack.start_api(workers=1, threads=16, wait=False)
            self.apis.append((proc, self.stack.api_url))
        for name in WORKERS:
            self.start_worker(name)
        for proc, _url in self.apis:
            proc.wait_ready()
        self.wait_workers()

    def finished(self, base: str, token: str) -> int:
        total = 0
        for status in TERMINAL:
            total += _request("GET", f"{base}/api/agent/jobs?status={status}&limit=1", token)["count"]
        return total


def run(broker_kind: str, jobs: int) -> int:
    sys.path.insert(0, str(BACKEND))
    from apps.webhooks.testing import WebhookReceiver

    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/librarian_cluster_{os.getpid()}"
    with temp_root() as tmp, WebhookReceiver() as receiver:
        template = Template(tmp)
        broker = PrivateRabbit() if broker_kind == "rabbitmq" else PrivateRedis()
        broker.start()
        stack = Stack(template, f"cluster-{broker_kind}")
        cluster = Cluster(stack, broker, tmp)
        try:
            return _run(cluster, template.token, receiver, jobs, broker_kind)
        finally:
            stack.stop()
            broker.remove()
            template.close()


def _run(cluster: Cluster, token: str, receiver, jobs: int, broker_kind: str) -> int:
    cluster.start()
    bases = [url for _proc, url in cluster.apis]
    cluster.note(f"cluster up: 2 APIs {bases}, 3 workers, broker {broker_kind} at {cluster.broker.url}")
    secret = _request("POST", f"{bases[0]}/api/webhooks/secret", token)
    assert secret.get("secret"), secret

    ids: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        body = {"query": f"{QUERIES[i % len(QUERIES)]} #{i}", "top_k": 3, "webhook_url": receiver.url}
        accepted = _request("POST", f"{bases[i % 2]}/api/agent/jobs", token, body)
        with lock:
            ids.append(accepted["id"])

    started = time.monotonic()
    killed = restarted = False
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(submit, i) for i in range(jobs)]
        for future in futures:
            future.result()
    cluster.note(f"{jobs} jobs accepted through 2 APIs in {time.monotonic() - started:.1f} s")

    deadline = time.monotonic() + max(300, jobs * 0.5)
    while True:
        done = cluster.finished(bases[1], token)
        if not killed and done >= jobs * 0.2:
            os.killpg(cluster.workers["agent"].pid, signal.SIGKILL)
            cluster.note(f"SIGKILL the agent worker at {done}/{jobs} finished")
            time.sleep(1)
            cluster.start_worker("agent")
            cluster.note("agent worker restarted")
            killed = True
        elif killed and not restarted and done >= jobs * 0.45:
            cluster.note(f"broker stop at {done}/{jobs} finished")
            cluster.broker.stop()
            time.sleep(1)
            cluster.broker.start()
            cluster.note("broker started again")
            restarted = True
        cluster.supervise()
        if done >= jobs:
            break
        if time.monotonic() > deadline:
            cluster.note(f"gave up waiting: {done}/{jobs} finished")
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    _wait_for_webhooks(cluster, ids, receiver)
    time.sleep(3)  # would a duplicate webhook arrive late?
    return _report(cluster, ids, receiver, jobs, elapsed, broker_kind)


def _wait_for_webhooks(cluster: Cluster, ids: list[str], receiver) -> None:
    """Wait until every job's webhook arrived and no delivery is pending, for WEBHOOKS_BOUND_SEC at most.

    Still supervising: a worker that the broker restart ends after the last job finished (kombu's Redis
    transport does that to a worker holding unacknowledged messages) carries deliveries, or the beat that
    sweeps them; a deployment's supervisor restarts it whenever it exits, so this one does too.
    """
    import psycopg

    started = time.monotonic()
    with psycopg.connect(cluster.stack.database_url, autocommit=True) as conn:
        while True:
            cluster.supervise()
            arrived = {json.loads(r.body)["data"]["job_id"] for r in list(receiver.requests)}
            waiting = sum(1 for job_id in ids if job_id not in arrived)
            pending = conn.execute(
                "SELECT count(*) FROM webhooks_delivery WHERE status = 'pending'"
            ).fetchone()[0]
            waited = time.monotonic() - started
            if not waiting and not pending:
                cluster.note(f"every webhook arrived {waited:.1f} s after the last job ended")
                return
            if waited > WEBHOOKS_BOUND_SEC:
                cluster.note(
                    f"gave up waiting for webhooks after {waited:.0f} s: {waiting} jobs without one,"
                    f" {pending} deliveries pending"
                )
                return
            time.sleep(0.5)


def _report(cluster: Cluster, ids: list[str], receiver, jobs: int, elapsed: float, broker_kind: str) -> int:
    import psycopg

    url = cluster.stack.database_url
    with psycopg.connect(url) as conn:
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM agent_agentjob GROUP BY status").fetchall()
        )
        attempt_of = dict(conn.execute("SELECT id::text, attempts FROM agent_agentjob").fetchall())
        attempts = Counter(attempt_of.values())
        answers = dict(
            conn.execute(
                "SELECT job_id::text, count(DISTINCT attempt) FROM agent_tracestep GROUP BY job_id"
            ).fetchall()
        )
        results = conn.execute("SELECT count(*) FROM agent_agentjob WHERE result IS NOT NULL").fetchone()[0]
        errors = dict(
            conn.execute(
                "SELECT error->>'code', count(*) FROM agent_agentjob WHERE status <> 'succeeded' GROUP BY 1"
            ).fetchall()
        )
        deliveries = dict(
            conn.execute("SELECT status, count(*) FROM webhooks_delivery GROUP BY status").fetchall()
        )
        delivery_rows = {
            job_id: row
            for job_id, *row in conn.execute(
                "SELECT job_id::text, status, attempts, last_error, next_attempt_at, locked_until"
                " FROM webhooks_delivery WHERE job_id IS NOT NULL"
            ).fetchall()
        }
    succeeded = statuses.get("succeeded", 0)
    lost = jobs - succeeded
    duplicated = sum(1 for n in answers.values() if n > 1) + (len(ids) - len(set(ids)))
    no_answer = sum(1 for job_id in ids if answers.get(job_id, 0) == 0)
    hook_jobs = Counter(json.loads(r.body)["data"]["job_id"] for r in receiver.requests)
    hook_ids = Counter(r.headers.get("webhook-id") for r in receiver.requests)
    hooks_missing = sum(1 for job_id in ids if hook_jobs[job_id] == 0)
    hooks_duplicated = sum(n - 1 for n in hook_jobs.values() if n > 1)
    redelivered_same_id = sum(n - 1 for n in hook_ids.values() if n > 1)
    ok = lost == 0 and duplicated == 0 and no_answer == 0 and hooks_missing == 0 and hooks_duplicated == 0
    print(f"cluster on {broker_kind}: {jobs} jobs, 2 APIs, 3 workers, PostgreSQL, Chroma server")
    for line in cluster.events:
        print(f"  {line}")
    print(
        f"jobs/s {jobs / elapsed:.1f} ({jobs} jobs in {elapsed:.1f} s, with a worker SIGKILL and a broker restart)"
    )
    print(f"statuses {statuses}; attempts {dict(sorted(attempts.items()))}; results stored {results}")
    print(f"lost {lost}, duplicated {duplicated}, without an answer {no_answer}")
    if errors:
        print(f"jobs that did not succeed, by error code: {errors}")
    print(f"workers that exited by themselves and were restarted: {cluster.unplanned_exits}")
    print(
        f"webhooks received {len(receiver.requests)}: missing {hooks_missing}, duplicated {hooks_duplicated}"
        f" (same webhook-id twice: {redelivered_same_id})"
    )
    print(f"deliveries {deliveries}")
    takeovers = cluster.takeovers()
    retried = [job_id for job_id, n in attempt_of.items() if n > 1]
    unexplained = [job_id for job_id in retried if not any(job_id in line for line in takeovers)]
    print(
        f"jobs run more than once: {len(retried)}, of which with no takeover in the logs: {len(unexplained)}"
    )
    for job_id in unexplained[:3]:
        for line in cluster.log_lines(job_id)[:10]:
            print(f"  {line}")
    dropped = sum(1 for line in takeovers if "no longer its own" in line)
    kinds = Counter(next((kind for kind in TAKEOVER_KINDS if kind in line), "other") for line in takeovers)
    print(
        f"attempts presumed lost, taken over or dropped (the workers' logs): {len(takeovers)} {dict(kinds)}"
    )
    # An attempt that ended after another had taken it over was alive: it should not have been taken over.
    print(f"live attempts taken over (ended, then dropped): {dropped}")
    for kind in TAKEOVER_KINDS[2:]:  # the rarer kinds, a few lines each
        for line in [line for line in takeovers if kind in line][:3]:
            print(f"  {line}")
    # A missing webhook's row says why: never recorded, still pending (and until when), or failed.
    for job_id in [job_id for job_id in ids if hook_jobs[job_id] == 0][:10]:
        print(f"  missing {job_id}: delivery {delivery_rows.get(job_id, 'none')}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="A cluster on one machine (bench/cluster.py).")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="rabbitmq")
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    return run(args.broker, args.jobs)


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the finally blocks stop every process started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
