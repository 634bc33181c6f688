"""A local OUP outbound API for tests: HTTPS history pages and a WSS live stream on 127.0.0.1, self-signed TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "climaborough test OUP")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class OupServer:
    """Serves `records` page by page (`?after=<index>&limit=n`) and pushes live messages to WebSocket clients."""

    def __init__(self, records: list[dict[str, Any]], cert: Path, key: Path) -> None:
        self.records = records
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.clients: set[ServerConnection] = set()
        self.connected = asyncio.Event()
        self.page_requests = 0
        self.fail_pages = 0
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/v1"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/api/v1/live"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path)
        if path.path == "/api/v1/live":
            return None
        if path.path != "/api/v1/records":
            return connection.respond(404, "not found\n")
        self.page_requests += 1
        if self.fail_pages > 0:
            self.fail_pages -= 1
            return connection.respond(503, "busy\n")
        query = parse_qs(path.query)
        start = int(query.get("after", ["0"])[0])
        limit = int(query.get("limit", ["100"])[0])
        page = self.records[start : start + limit]
        end = start + len(page)
        body = {"records": page, "cursor": str(end), "more": end < len(self.records)}
        return connection.respond(200, json.dumps(body))

    async def _handler(self, connection: ServerConnection) -> None:
        self.clients.add(connection)
        self.connected.set()
        try:
            await connection.wait_closed()
        finally:
            self.clients.discard(connection)

    async def start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", 0, ssl=self.context,
                                   process_request=self._process_request)  # fmt: skip
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for_client(self) -> None:
        """Until a live client is connected (callers bound it with asyncio.timeout)."""
        await self.connected.wait()

    async def push(self, message: str) -> None:
        for client in list(self.clients):
            await client.send(message)
