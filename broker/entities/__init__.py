"""Entities slice of the NGSI-LD broker."""
