"""`python -m agents.oup [--tenant T]`: run the OUP connector with the CLIMABOROUGH_* settings until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from agents.files.command import resolve_mapping
from agents.oup.connector import OupConnector
from agents.oup.settings import OupSettings


async def main(tenant: str | None, mapping: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    connector = OupConnector(OupSettings(), resolve_mapping(mapping), tenant=tenant)
    try:
        await connector.run(stop)
    finally:
        await connector.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Follow an OUP (HTTPS history, WSS live) into the NGSI-LD broker.")
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--mapping", default="oup")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(arguments.tenant, arguments.mapping))
