"""Benchmarks that print markdown tables: `python -m bench [--smoke] [--only a,b] [--write]`.

Each benchmark starts its own processes (API, worker, LLM test server) on a fresh database and Redis
database 9, measures a figure beside its baseline in the same run, and tears everything down. See
docs/benchmarks.md for the figures and what they mean.
"""
