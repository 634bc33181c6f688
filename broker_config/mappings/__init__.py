"""Mapping files (YAML) shipped for known sources; `climaborough ingest --mapping <name>` finds them here."""
