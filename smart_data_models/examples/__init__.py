"""The official Smart Data Models normalized NGSI-LD examples (CC-BY-4.0, see SOURCES.md), shipped for the demo."""
