"""`make up`: set everything up and run the stack in the foreground, then answer one real query.

Steps: migrate, load the catalogue, build the vector store if missing, find or start a Redis, start the
API (gunicorn with uvicorn workers, ASGI), a worker (with beat) and Flower, wait for /api/health, submit a query through the HTTP
API, poll it, print the answer, and keep running until Ctrl-C, which stops only what it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "backend"
VAR = REPO / "var"
PY = sys.executable
QUERY = os.environ.get("UP_QUERY", "a novel about a whale hunt and obsession at sea")
# `make up LLM=local`: a real model server beside the stack (scripts/local_llm.py, docs/llm.md).
UP_LLM = os.environ.get("UP_LLM", "")

children: list[subprocess.Popen] = []
# Seconds since `make up` started this script, on every line: where a slow start spends its time shows.
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[up {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def port_is_free(port: int) -> bool:
    """True unless another socket really holds `port` on the loopback interface.

    The probe binds as gunicorn, Flower and Redis bind (SO_REUSEADDR), so connections of a stack stopped a
    moment ago, still in TIME_WAIT, do not count as "taken": a restart keeps the README's port.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(preferred: int) -> int:
    """`preferred` when it is free, else a free port chosen by the system."""
    if port_is_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_port(name: str, default: int, env: dict[str, str]) -> int:
    """The port in `env[name]` (or `default`); if another process holds it, another one, said loudly."""
    preferred = int(env.get(name) or default)
    port = free_port(preferred)
    if port != preferred:
        line = "!" * 78
        say(line)
        say(f"PORT {preferred} IS TAKEN by another process: {name} moves to {port} for this run.")
        say(f"Every URL below and in the README ({preferred}) must use {port}; or stop the other process")
        say(f"(e.g. `ss -ltnp 'sport = :{preferred}'` shows it) or set {name} to a port of your own.")
        say(line)
    return port


def api_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """gunicorn with uvicorn workers (ASGI) as every shipped server runs it (`config.asgi_server.main`:
    config/gunicorn.conf.py), to be run in backend/."""
    return [PY, "-m", "config.asgi_server", "-b", f"{host}:{port}"]


def redis_answers(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
        return True
    except Exception:
        return False


def ensure_redis(env: dict[str, str]) -> None:
    url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        say(f"Redis answers at {url}")
        env["REDIS_URL"] = url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        say("No Redis answers at REDIS_URL and there is no redis-server binary.")
        say("Install one (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)")
        say("or point REDIS_URL at a running Redis, then run `make up` again.")
        sys.exit(2)
    port = free_port(6390)
    data = VAR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    start(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        env,
        "redis",
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        if redis_answers(url):
            break
        time.sleep(0.1)
    env["REDIS_URL"] = url
    env.pop("CELERY_BROKER_URL", None)
    say(f"started a local Redis at {url} (data under var/redis)")


def start(cmd: list[str], env: dict[str, str], name: str, cwd: Path = BACKEND) -> subprocess.Popen:
    log = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    children.append(proc)
    return proc


def start_local_llm(env: dict[str, str]) -> None:
    """Start llama.cpp's server with SmolLM2-135M-Instruct and point the stack's LLM_* variables at it."""
    sys.path.insert(0, str(REPO / "scripts"))
    from local_llm import LocalLLMMissing, LocalLLMServer

    try:
        server = LocalLLMServer(port=free_port(8091), log_path=VAR / "local-llm.log")
    except LocalLLMMissing as exc:
        say(f"LLM=local: {exc}")
        sys.exit(2)
    say(
        f"starting llama.cpp's server with SmolLM2-135M-Instruct at {server.base_url} (log var/local-llm.log)"
    )
    server.start()
    children.append(server.process)
    env.update(server.env())
    # A 135M model on a CPU: a few seconds per answer; shorter answers keep `make up` snappy.
    env.setdefault("LLM_MAX_TOKENS", "160")
    env.setdefault("LLM_TIMEOUT_SEC", "45")


def manage(*args: str, env: dict[str, str], capture: bool = False) -> str:
    result = subprocess.run(
        [PY, "manage.py", *args], cwd=BACKEND, env=env, check=True, text=True, capture_output=capture
    )
    return (result.stdout or "").strip()


def http(method: str, url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own loopback API
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def stop_all(*_: object) -> None:
    say("stopping...")
    for proc in reversed(children):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for proc in children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    say("stopped.")
    sys.exit(0)


def main() -> None:
    VAR.mkdir(exist_ok=True)
    env = dict(os.environ)
    # What `make up` changes in the environment (README, "What `make up` sets"): unbuffered logs, and
    # below REDIS_URL when it starts its own Redis and WORKER_BEAT=1 for its one worker. DEBUG stays as
    # given (off by default, as in production).
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHON"] = PY
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)

    ensure_redis(env)
    if UP_LLM == "local":
        start_local_llm(env)
    elif UP_LLM:
        say(f"LLM={UP_LLM!r} is not an option; use LLM=local or set LLM_* in .env (docs/llm.md)")
        sys.exit(2)
    say("migrating the database")
    manage("migrate", "--noinput", "-v", "0", env=env)
    say("loading the catalogue fixture")
    manage("loaddata", "libros_prueba", "-v", "0", env=env)
    say("collecting static files (admin, Swagger UI, ReDoc) under var/static; gunicorn serves them")
    manage("collectstatic", "--noinput", "-v", "0", env=env)
    say(
        "vector store: up to date, or imported from the bundled zip, or built (only what changed is embedded)"
    )
    manage("build_vector_db", "--no-progress", env=env)

    api_port = choose_port("API_PORT", 8000, env)
    flower_port = choose_port("FLOWER_PORT", 5555, env)
    flower_auth = env.get("FLOWER_BASIC_AUTH", "admin:librarian")
    base = f"http://127.0.0.1:{api_port}"
    say("starting the API, the worker and Flower")
    start(api_command(api_port), env, "api")
    start([str(REPO / "worker" / "start.sh")], {**env, "WORKER_BEAT": "1"}, "worker")
    start(
        [
            PY,
            "-m",
            "config.flower",  # celery flower with /metrics behind the same basic auth
            "--address=127.0.0.1",
            f"--port={flower_port}",
            f"--basic-auth={flower_auth}",
            # RabbitMQ: the management API feeds the Broker page (docs/operations.md, "Flower on RabbitMQ").
            *([f"--broker_api={env['FLOWER_BROKER_API']}"] if env.get("FLOWER_BROKER_API") else []),
        ],
        env,
        "flower",
    )

    say("waiting for /api/health ...")
    deadline = time.time() + 90
    while True:
        try:
            code, report = http("GET", f"{base}/api/health")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            code, report = 0, {}
        if code == 200:
            break
        if time.time() > deadline:
            say(f"health is not green after 90 s: {report or 'no answer'}; see var/*.log")
            stop_all()
        for proc in children:
            if proc.poll() is not None:
                say(f"a process exited early ({proc.args[0]}); see var/*.log")
                stop_all()
        time.sleep(0.5)
    say(
        "health is green: "
        + ", ".join(f"{k}={'ok' if v.get('ok') else 'FAIL'}" for k, v in report["checks"].items())
    )

    token = manage("create_api_token", "demo", env=env, capture=True).splitlines()[-1]
    say(f"demo user 'demo', API token: {token}")
    say(f"submitting: {QUERY!r}")
    code, accepted = http("POST", f"{base}/api/agent/jobs", token, {"query": QUERY, "top_k": 3})
    if code != 202:
        say(f"submission failed: {code} {accepted}")
        stop_all()
    job = accepted
    for _ in range(120):
        code, job = http("GET", base + accepted["poll_url"], token)
        if job.get("status") in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.5)
    say(
        f"job {job['id']} ended {job['status']} (degraded={job.get('degraded')}) in {job['timings']['run_ms']:.0f} ms"
    )
    say(f"first answer {time.monotonic() - T0:.1f} s after `make up` started this script")
    print("\n" + (job.get("message") or json.dumps(job.get("error"))) + "\n", flush=True)
    for row in job.get("results", []):
        print(
            f"  #{row['id']:>4}  {row['title']} — {row['author']} ({row['year']})  score={row['score']:.3f}"
        )
    print()
    say(f"API docs:   {base}/api/docs/")
    say(f"Admin:      {base}/admin/")
    say(
        f"Flower:     http://127.0.0.1:{flower_port}/  (basic auth {flower_auth.split(':')[0]}:…, FLOWER_BASIC_AUTH)"
    )
    say(f"Try:        curl -H 'Authorization: Token {token}' {base}/api/agent/jobs")
    say("logs in var/*.log; Ctrl-C stops everything started here.")
    while True:
        for proc in children:
            if proc.poll() is not None:
                say(f"{proc.args[0]} exited with {proc.returncode}; see var/*.log")
                stop_all()
        time.sleep(1)


if __name__ == "__main__":
    main()
