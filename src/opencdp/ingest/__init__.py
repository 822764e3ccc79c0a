"""Single-record ingest: validate -> durable log (group commit) -> batch flush into the store."""
