"""`make up` (scripts/dev_up.py) keeps the README's ports across a stop and an immediate restart."""

from __future__ import annotations

import os
import re
import socket
import subprocess

from scripts import dev_up


def _listener() -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def _time_wait_on_a_closed_port() -> int:
    """A port whose server is gone but whose last connection is in TIME_WAIT (the server closed first),
    as after Ctrl-C on a stack that had just served a request."""
    server = _listener()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.recv(1)
    client.close()
    server.close()
    states = subprocess.run(["ss", "-tan", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert "TIME-WAIT" in states, states
    return port


def test_a_port_in_time_wait_is_kept(capsys):
    port = _time_wait_on_a_closed_port()

    assert dev_up.choose_port("API_PORT", 8000, {"API_PORT": str(port)}) == port
    assert "TAKEN" not in capsys.readouterr().out


def test_a_port_another_process_listens_on_moves_and_says_so_loudly(capsys):
    server = _listener()
    port = server.getsockname()[1]
    try:
        chosen = dev_up.choose_port("API_PORT", 8000, {"API_PORT": str(port)})
    finally:
        server.close()

    out = capsys.readouterr().out
    assert chosen != port
    assert f"PORT {port} IS TAKEN" in out
    assert f"API_PORT moves to {chosen}" in out
    assert "!" * 78 in out


def _gunicorn_config(web_concurrency: str | None) -> subprocess.CompletedProcess:
    """What gunicorn makes of the shipped configuration (`--print-config`: loads it, serves nothing)."""
    command = [*dev_up.api_command(0), "--print-config"]
    env = {key: value for key, value in os.environ.items() if key != "WEB_CONCURRENCY"}
    if web_concurrency is not None:
        env["WEB_CONCURRENCY"] = web_concurrency
    return subprocess.run(command, cwd=dev_up.BACKEND, env=env, capture_output=True, text=True, timeout=60)


def test_the_api_server_runs_as_many_processes_as_web_concurrency_says():
    assert re.search(r"^workers\s+= 2$", _gunicorn_config(None).stdout, re.M)  # unset: the default
    assert re.search(r"^workers\s+= 5$", _gunicorn_config("5").stdout, re.M)
    # Blank means the default, as for every variable (gunicorn alone ended in a ValueError on it).
    assert re.search(r"^workers\s+= 2$", _gunicorn_config("").stdout, re.M)
    for bad in ("0", "two"):
        refused = _gunicorn_config(bad)
        assert refused.returncode != 0
        assert f"WEB_CONCURRENCY={bad!r} is invalid: expected an integer" in refused.stderr.splitlines()[-1]
