"""`python -m bench [--smoke] [--only overhead,concurrency,throughput,polling,live,streaming,memory,rate_limit,retrieval] [--write]`.

Runs the benchmarks (all by default) and prints one markdown section per benchmark. `--smoke` uses tiny
sizes (the whole set in about a minute) to keep the scripts working; its figures mean little. `--write`
rewrites the generated blocks of docs/benchmarks.md with the machine, the versions and the figures (the
Retrieval section, written by bench/retrieval.py, and the prose are kept).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from bench import concurrency, live, memory, overhead, polling, rate_limit, report, streaming, throughput
from bench.report import Section
from bench.stack import PY, REPO, Template, log, postgres, temp_root


def retrieval(template: Template, *, smoke: bool) -> Section:
    """bench/retrieval.py (Chroma against brute force, and the real model), run as it runs alone."""
    del template
    args = ["--smoke", "--no-fixture"] if smoke else []
    result = subprocess.run(
        [PY, "-m", "bench.retrieval", *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench.retrieval failed:\n{result.stderr[-3000:]}")
    body = result.stdout.strip()
    body = body.split("\n", 1)[1].strip() if body.startswith("### Retrieval") else body
    return Section("retrieval", "Retrieval", body + "\n")


BENCHMARKS: dict[str, Callable[..., Section]] = {
    "overhead": overhead.run,
    "concurrency": concurrency.run,
    "throughput": throughput.run,
    "polling": polling.run,
    "live": live.run,
    "streaming": streaming.run,
    "memory": memory.run,
    "rate_limit": rate_limit.run,
    "retrieval": retrieval,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that everything runs")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--write", action="store_true", help="rewrite the figures in docs/benchmarks.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    # SIGTERM (a timeout) unwinds like Ctrl-C: every stack stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, load_before, clock = report.now(), report.load(), time.monotonic()
    sections: list[Section] = []
    with temp_root() as tmp:
        template = Template(tmp)
        try:
            for name in names:
                t, load_at_start = time.monotonic(), report.load()
                section = BENCHMARKS[name](template, smoke=args.smoke)
                log(f"{name} done in {time.monotonic() - t:.0f} s")
                if postgres():
                    # Its own blocks in docs/benchmarks.md: the SQLite figures stay beside these.
                    section.key, section.title = f"{section.key}-postgresql", f"{section.title} (PostgreSQL)"
                section.note = (
                    f"_Measured {report.now():%Y-%m-%d %H:%M} UTC by `python -m bench"
                    f"{' --smoke' if args.smoke else ''} --only {name}` in {time.monotonic() - t:.0f} s; "
                    f"load average {load_at_start} at the start, {report.load()} at the end._"
                )
                print(section.markdown(), flush=True)
                sections.append(section)
        finally:
            template.close()
    env = report.environment(load_before, started)
    print(report.header_block(env, "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)))
    log(f"all done in {time.monotonic() - clock:.0f} s")
    if args.write:
        command = (
            "python -m bench"
            + (" --smoke" if args.smoke else "")
            + (f" --only {args.only}" if args.only else "")
        )
        report.write(
            [s for s in sections if not s.key.startswith("retrieval")],
            env,
            command,
            environment_key="environment-postgresql" if postgres() else "environment",
        )
        log(f"wrote {report.DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
