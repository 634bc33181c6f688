"""`climaborough config apply`: stores the deployment's @contexts and subscriptions on any NGSI-LD broker, idempotently.

Contexts (GS CIM 009 5.13) are broker-wide: a Smart Data Models context is stored unless the
broker already hosts an identical document. Subscriptions (GS CIM 009 5.8) are per tenant: one
with the same id and the same content is left alone, one that differs is updated with PATCH,
a missing one is created. Running it twice changes nothing the second time. Everything goes
through `ngsi.client`, so it works against our broker, Orion-LD or any compliant broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from broker_config.contexts import SMART_DATA_MODELS_FILES, package_copy
from ngsi.client import AsyncBrokerClient
from ngsi.errors import AlreadyExists, NgsiError, ResourceNotFound

SUBSCRIPTIONS_DIR = Path(__file__).resolve().parent / "subscriptions"

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
"""`${NAME}` or `${NAME:-default}`, as in shell and Compose files."""


class ConfigError(ValueError):
    """A configuration file that cannot be applied (unreadable JSON, a variable without value)."""


@dataclass
class ApplyReport:
    """What `apply_config` did: per context file and per (tenant, subscription id) one of
    `created`, `updated`, `unchanged`."""

    contexts: dict[str, str] = field(default_factory=dict)
    subscriptions: dict[tuple[str | None, str], str] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        outcomes = [*self.contexts.values(), *self.subscriptions.values()]
        return sum(outcome != "unchanged" for outcome in outcomes)


# -- loading ------------------------------------------------------------------------------------


def substitute(value: Any, variables: Mapping[str, str], *, where: str) -> Any:
    """Replace `${NAME:-default}` in every string of a JSON value; a variable without value is an error."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in variables and variables[name] != "":
                return variables[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: variable {name} is not set and has no default")

        return VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [substitute(item, variables, where=where) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, variables, where=where) for key, item in value.items()}
    return value


def load_subscriptions(
    folder: Path = SUBSCRIPTIONS_DIR, variables: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The subscriptions of `folder/*.json` (sorted by file name) with their variables replaced."""
    values = os.environ if variables is None else variables
    subscriptions = []
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: {error}") from None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ConfigError(f"{path}: a subscription must be a JSON object with an id")
        subscriptions.append(substitute(body, values, where=str(path)))
    return subscriptions


def smart_data_models_contexts() -> dict[str, dict[str, Any]]:
    """The Smart Data Models @context documents a deployment stores on its broker, by file name."""
    return {name: orjson.loads(package_copy(name)) for name in SMART_DATA_MODELS_FILES}


# -- comparing ----------------------------------------------------------------------------------


def holds(actual: Any, wanted: Any) -> bool:
    """Whether the broker's `actual` value says everything `wanted` says (it may say more, e.g. `status`).

    Lists of plain values compare as sets (brokers may reorder attribute names); lists of
    objects compare item by item.
    """
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return False
        return all(key in actual and holds(actual[key], item) for key, item in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(actual, list) or len(actual) != len(wanted):
            return False
        if all(not isinstance(item, dict | list) for item in wanted):
            return sorted(map(str, actual)) == sorted(map(str, wanted))
        return all(holds(a, w) for a, w in zip(actual, wanted, strict=True))
    return bool(actual == wanted)


def _members(subscription: Mapping[str, Any]) -> dict[str, Any]:
    """What a PATCH may change: everything but the id, the type and the @context."""
    return {key: value for key, value in subscription.items() if key not in ("id", "type", "@context")}


# -- applying -----------------------------------------------------------------------------------


async def apply_contexts(client: AsyncBrokerClient, documents: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Store each document unless the broker already hosts an identical one."""
    hosted = []
    for info in await client.list_contexts(details=True):
        if not isinstance(info, dict):
            continue
        # GS CIM 009 5.13.3 names them `kind`/`localId`; Orion-LD answers `type`/`id`.
        kind = str(info.get("kind", info.get("type", ""))).lower()
        local_id = info.get("localId", info.get("id"))
        if kind == "hosted" and isinstance(local_id, str):
            try:
                hosted.append(await client.get_context(local_id))
            except ResourceNotFound:
                continue
    outcomes = {}
    for name, document in documents.items():
        if any(stored == document for stored in hosted):
            outcomes[name] = "unchanged"
        else:
            await client.add_context(document)
            outcomes[name] = "created"
    return outcomes


async def apply_subscription(client: AsyncBrokerClient, subscription: Mapping[str, Any]) -> str:
    """Create, update or leave alone one subscription; returns what happened."""
    sid = str(subscription["id"])
    try:
        await client.create_subscription(subscription)
        return "created"
    except AlreadyExists:
        pass
    # The broker compacts its answer with the Link we send: the subscription's own @context.
    context = subscription.get("@context")
    link = context[0] if isinstance(context, list) and len(context) == 1 else context
    reader = AsyncBrokerClient(client.base_url, tenant=client.tenant,
                               context=link if isinstance(link, str) else None)  # fmt: skip
    async with reader:
        current = await reader.get_subscription(sid)
        if holds(current, _members(subscription)):
            return "unchanged"
        await reader.update_subscription(sid, _members(subscription))
    return "updated"


async def apply_config(
    broker_url: str,
    *,
    tenants: Sequence[str | None] = (None,),
    subscriptions: Sequence[Mapping[str, Any]] | None = None,
    contexts: Mapping[str, dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    request_timeout_s: float = 30.0,
) -> ApplyReport:
    """Store `contexts` once and `subscriptions` in every tenant (default: the shipped ones)."""
    wanted_subscriptions = load_subscriptions() if subscriptions is None else subscriptions
    wanted_contexts = smart_data_models_contexts() if contexts is None else contexts
    report = ApplyReport()
    async with AsyncBrokerClient(broker_url, headers=headers, timeout=request_timeout_s) as client:
        report.contexts = await apply_contexts(client, wanted_contexts)
    for tenant in tenants:
        async with AsyncBrokerClient(broker_url, tenant=tenant, headers=headers, timeout=request_timeout_s) as client:
            for subscription in wanted_subscriptions:
                outcome = await apply_subscription(client, subscription)
                report.subscriptions[(tenant, str(subscription["id"]))] = outcome
    return report


# -- command ------------------------------------------------------------------------------------

config_app = typer.Typer(help="Broker configuration: @contexts and subscriptions the platform needs.",
                         no_args_is_help=True)  # fmt: skip


BrokerUrlOption = Annotated[
    str | None, typer.Option(help="Broker root URL (CLIMABOROUGH_BROKER_URL, default http://127.0.0.1:1026).")
]
TenantOption = Annotated[
    list[str] | None,
    typer.Option(help="NGSILD-Tenant to register the subscriptions in (repeatable; default tenant if none)."),
]
SubscriptionsOption = Annotated[
    Path | None,
    typer.Option(file_okay=False, exists=True, help="Folder of subscription files (default: the shipped ones)."),
]
TokenOption = Annotated[
    str | None, typer.Option(envvar="CLIMABOROUGH_TOKEN", help="Bearer token, when the broker is behind the gateway.")
]


@config_app.command("apply")
def apply_command(
    broker_url: BrokerUrlOption = None,
    tenant: TenantOption = None,
    subscriptions: SubscriptionsOption = None,
    token: TokenOption = None,
) -> None:
    """Register the deployment's @contexts and subscriptions on a broker; safe to run again."""
    console = Console()
    url = broker_url or os.environ.get("CLIMABOROUGH_BROKER_URL") or "http://127.0.0.1:1026"
    tenants: list[str | None] = list(tenant) if tenant else [os.environ.get("CLIMABOROUGH_TENANT") or None]
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        wanted = load_subscriptions(subscriptions or SUBSCRIPTIONS_DIR)
        report = asyncio.run(apply_config(url, tenants=tenants, subscriptions=wanted, headers=headers))
    except ConfigError as error:
        console.print(f"[red]Configuration error:[/red] {error}")
        raise typer.Exit(2) from None
    except NgsiError as error:
        console.print(f"[red]{error.title}:[/red] {error.detail}")
        raise typer.Exit(1) from None
    table = Table("what", "tenant", "id", "outcome", title=f"config apply → {url}")
    for name, outcome in report.contexts.items():
        table.add_row("@context", "(all)", name, outcome)
    for (where, sid), outcome in report.subscriptions.items():
        table.add_row("subscription", where or "(default)", sid, outcome)
    console.print(table)
    console.print(f"{report.changed} change(s).")
