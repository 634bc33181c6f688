"""`python -m agents.iot`: run one IoT agent process with settings from the `CLIMABOROUGH_*` environment."""

from __future__ import annotations

import asyncio
import logging
import os

from agents.iot.service import run_iot_agent
from agents.iot.settings import IotAgentSettings

if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("CLIMABOROUGH_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(run_iot_agent(IotAgentSettings()))
