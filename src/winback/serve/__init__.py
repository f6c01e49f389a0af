"""The winback service: HTTP ingest and the operational state of the real-time loop (issue 6)."""
