"""`python -m agents.iot`: run one IoT agent process with settings from the `CLIMABOROUGH_*` environment.

It cannot check tokens (agents/ does not import api/), so it runs only with `CLIMABOROUGH_AUTH=off`;
`climaborough agent iot` is the same agent with its provisioning API behind the authenticator.
"""

from __future__ import annotations

import asyncio
import logging
import os

from agents.iot.service import run_iot_agent
from agents.iot.settings import IotAgentSettings

if __name__ == "__main__":
    if os.environ.get("CLIMABOROUGH_AUTH", "off").strip().lower() != "off":
        raise SystemExit(
            "python -m agents.iot cannot check tokens, so it refuses to run with CLIMABOROUGH_AUTH="
            f"{os.environ['CLIMABOROUGH_AUTH']}: start the agent with 'climaborough agent iot', "
            "whose provisioning API requires a city-admin token"
        )
    logging.basicConfig(
        level=os.environ.get("CLIMABOROUGH_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger(__name__).warning(
        "AUTHENTICATION IS OFF service=iot-agent: the provisioning API accepts every request without a token"
    )
    asyncio.run(run_iot_agent(IotAgentSettings()))
