"""Fixtures of the IoT agent tests (defined in iot_services.py): MQTT server, agents, private brokers, a device."""

from tests.agents.iot.iot_services import mqtt_server, publisher, start_agent, start_module_agent, start_private_broker

__all__ = ["mqtt_server", "publisher", "start_agent", "start_module_agent", "start_private_broker"]
