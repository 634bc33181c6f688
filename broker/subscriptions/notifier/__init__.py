"""Notification delivery: outbox lanes, retries, rendering, and the HTTP and MQTT senders."""
