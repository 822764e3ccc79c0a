"""Durable jobs: a queue in the metadata DB, worker threads, per-project limits."""
