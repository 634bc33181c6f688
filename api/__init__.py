"""Platform REST API (FastAPI, :8000): twin what-if and forecasts, KPI reads, health and version."""
