"""Triton metrics: scraped straight from /metrics or queried through Prometheus."""
