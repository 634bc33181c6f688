"""Package data: the JSON-LD @context files served offline (see SOURCES.md)."""
