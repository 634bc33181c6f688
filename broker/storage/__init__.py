"""Storage slice of the NGSI-LD broker."""
