"""Locust load tests: users, scenarios, SLO gates, server-side figures and the report."""
