"""Package data: the official Smart Data Models JSON schemas, verbatim (see SOURCES.md)."""
