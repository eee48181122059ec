"""Edgewire gateway: device auth, rate limits, ingestion, storage, fan-out, alerts, dashboard."""
