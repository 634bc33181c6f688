"""Discovery slice of the NGSI-LD broker."""
