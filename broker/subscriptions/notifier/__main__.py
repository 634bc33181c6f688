"""The notifier process (started by `NotifierProcess`): delivers the outbox of every tenant database.

It reads the broker's settings from `CLIMABOROUGH_NOTIFIER_BROKER_SETTINGS` and hints from
stdin, one per line: `watch <tenant|->` (a tenant database got its first notification) and
`wake <tenant|-> <subscription id>` (a subscription changed). It stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from broker.contexts.service import UserContextService
from broker.settings import BrokerSettings
from broker.storage.tenants import TenantDatabases
from broker.subscriptions.notifier.delivery import Notifier
from broker.subscriptions.notifier.process import READY, READY_FD_VARIABLE, SETTINGS_VARIABLE
from broker.subscriptions.registry import SubscriptionRegistry
from ngsi.contexts import ContextStore

API_PREFIX = "/ngsi-ld/v1"
log = logging.getLogger("broker.subscriptions.notifier")


async def serve(settings: BrokerSettings) -> None:
    databases = TenantDatabases(settings)
    contexts = ContextStore(
        fetch_timeout=settings.context_fetch_timeout_s,
        hosted_base_url=f"http://{settings.host}:{settings.port}{API_PREFIX}/jsonldContexts/",
    )
    await databases.open()
    await UserContextService(databases, contexts).load()
    notifier = Notifier(databases, contexts, SubscriptionRegistry(contexts))
    await notifier.start()
    # What start-up built (modules, settings, pools, contexts) lives as long as the process. Frozen,
    # a full collection no longer walks it: unfrozen, each one (every ~20 s at 200 updates/s) held
    # the loop for ~70 ms of CPU, and every notification on its way waited for it (the p99 tail).
    gc.collect()
    gc.freeze()
    tell_ready()
    loop = asyncio.get_running_loop()
    hints = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(hints), sys.stdin)
    try:
        while line := await hints.readline():
            command, *args = line.decode().split()
            tenant = None if not args or args[0] == "-" else args[0]
            if command == "watch":
                notifier.watch_soon(tenant)
            elif command == "wake" and len(args) == 2:
                notifier.wake(tenant, args[1])
    finally:
        await notifier.stop()
        await databases.close()


def tell_ready() -> None:
    """Tell the broker (`NotifierProcess.start`) that every watched database is listened to."""
    fd = os.environ.get(READY_FD_VARIABLE)
    if fd is None:
        return
    try:
        os.write(int(fd), READY)
        os.close(int(fd))
    except (OSError, ValueError):
        pass  # the broker stopped waiting (or started us by hand): nothing to tell


def main() -> None:
    logging.basicConfig(level=os.environ.get("CLIMABOROUGH_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = BrokerSettings.model_validate_json(os.environ[SETTINGS_VARIABLE])
    # Ctrl-C reaches the whole process group: the broker stops us by closing stdin, after its own shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
