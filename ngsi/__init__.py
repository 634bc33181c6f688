"""ngsi package."""
