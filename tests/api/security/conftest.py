"""Fixtures for the security tests: a local OpenID issuer and the gateway on a free loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.gateway import GatewaySettings, create_gateway_app
from broker.embedded_postgres import free_port
from tests.api.security.issuer import CLIENT_ID, LocalIssuer


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    running = LocalIssuer()
    yield running
    running.close()


async def serve(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Run `app` with uvicorn on a free 127.0.0.1 port in this loop; returns once it accepts requests."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{port}"


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, 20)


def keycloak_settings(issuer: LocalIssuer, broker_url: str, **extra: object) -> GatewaySettings:
    return GatewaySettings(
        auth="keycloak",
        keycloak_url=issuer.url,
        keycloak_realm=issuer.realm,
        keycloak_client_id=CLIENT_ID,
        broker_url=broker_url,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
async def gateway_url(issuer: LocalIssuer, broker_url: str) -> AsyncIterator[str]:
    server, task, url = await serve(create_gateway_app(keycloak_settings(issuer, broker_url)))
    yield url
    await stop(server, task)


@pytest.fixture
async def gateway(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client
