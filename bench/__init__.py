"""Benchmarks of the platform: each `bench/<name>.py` runs as `python -m bench.<name>` and prints one JSON line."""
