"""Batch slice of the NGSI-LD broker."""
