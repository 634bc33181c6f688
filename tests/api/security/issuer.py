"""A local OpenID issuer for tests: Keycloak's realm endpoints on 127.0.0.1 and real RS256 access tokens.

It serves `/realms/<realm>/.well-known/openid-configuration` and
`/realms/<realm>/protocol/openid-connect/certs` (the key set, with an encryption key beside the
signing keys as Keycloak publishes), counts key-set downloads, can rotate keys, and mints access
tokens shaped like Keycloak's (`typ: Bearer`, `azp`, `realm_access.roles`, `tenants`).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jwcrypto import jwk, jwt

REALM = "climaborough"
CLIENT_ID = "climaborough"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalIssuer:
    """A running issuer; `url` is what `KEYCLOAK_URL` would be."""

    def __init__(self, realm: str = REALM) -> None:
        self.realm = realm
        self.signing_keys: list[jwk.JWK] = [self.new_key()]
        self.encryption_key = jwk.JWK.generate(kty="RSA", size=2048, kid=f"enc-{uuid.uuid4().hex[:8]}", use="enc")
        self.cert_fetches = 0
        self.available = True
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not issuer.available:
                    self.send_error(503)
                    return
                base = f"/realms/{issuer.realm}"
                if self.path == f"{base}/.well-known/openid-configuration":
                    self._json(issuer.openid_configuration())
                elif self.path == f"{base}/protocol/openid-connect/certs":
                    issuer.cert_fetches += 1
                    self._json(issuer.jwks())
                else:
                    self.send_error(404)

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{self.realm}"

    @staticmethod
    def new_key() -> jwk.JWK:
        return jwk.JWK.generate(kty="RSA", size=2048, kid=uuid.uuid4().hex, use="sig", alg="RS256")

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/protocol/openid-connect/certs",
            "token_endpoint": f"{self.issuer}/protocol/openid-connect/token",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        keys = [key.export_public(as_dict=True) for key in self.signing_keys]
        keys.append(self.encryption_key.export_public(as_dict=True))
        return {"keys": keys}

    def rotate(self) -> jwk.JWK:
        """Publish a new signing key (beside the old ones) and return it."""
        key = self.new_key()
        self.signing_keys.append(key)
        return key

    def claims(
        self,
        *,
        roles: list[str],
        tenants: list[str],
        entity_types: list[str] | None = None,
        subject: str | None = None,
        lifetime_s: int = 300,
        **overrides: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "exp": now + lifetime_s,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": "account",
            "sub": subject or str(uuid.uuid4()),
            "typ": "Bearer",
            "azp": CLIENT_ID,
            "realm_access": {"roles": [*roles, "default-roles-climaborough"]},
            "tenants": tenants,
            "preferred_username": "tester",
        }
        if entity_types is not None:
            claims["entityTypes"] = entity_types
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def sign(self, claims: dict[str, Any], *, key: jwk.JWK | None = None, kid: str | None = None) -> str:
        """An RS256 token over `claims`, by default with the newest published key and its `kid`."""
        key = key or self.signing_keys[-1]
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or key["kid"]}
        token = jwt.JWT(header=header, claims=claims)
        token.make_signed_token(key)
        return str(token.serialize())

    def token(self, **claims: Any) -> str:
        return self.sign(self.claims(**claims))

    @staticmethod
    def unsigned(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        """An `alg: none` token (RFC 7519 6.1): header.payload. with an empty signature."""
        head = header or {"alg": "none", "typ": "JWT"}
        return f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}."

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
