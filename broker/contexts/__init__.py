"""Contexts slice of the NGSI-LD broker."""
