"""The `climaborough` command's configuration: the `CLIMABOROUGH_*` variables with embedded defaults."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

BROKER_PORT = 1026
DEFAULT_DATABASE = "climaborough"


class CliSettings(BaseSettings):
    """What `climaborough` needs to start and wire the services (ARCHITECTURE.md "Configuration").

    Unset `database_url` and `mqtt_url` mean "run the embedded one": a PostgreSQL under
    `data_dir` and an in-process MQTT broker.
    """

    model_config = SettingsConfigDict(env_prefix="CLIMABOROUGH_", extra="ignore")

    database_url: str | None = None
    mqtt_url: str | None = None
    broker_url: str = f"http://127.0.0.1:{BROKER_PORT}"
    auth: Literal["off", "keycloak"] = "off"
    keycloak_url: str = "http://127.0.0.1:8080"
    keycloak_realm: str = "climaborough"
    keycloak_client_id: str = "climaborough"
    data_dir: Path = Path(".data")


UNPRIVILEGED_USER = "nobody"
"""Who runs PostgreSQL when we are root (it refuses to run as root)."""


def reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether a user (uid, gid, no supplementary groups) can enter every folder on the way to `path`."""
    resolved = path.absolute().resolve()
    for folder in [*reversed(resolved.parents), resolved]:
        try:
            info = folder.stat()
        except FileNotFoundError:
            return True  # created by us later, with modes that let the user in
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def fallback_data_dir(data_dir: Path) -> Path:
    """`/var/tmp/climaborough-<hash of the data folder's path>`: one stable folder per clone."""
    digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"climaborough-{digest}"


def usable_data_dir(data_dir: Path) -> tuple[Path, str | None]:
    """The data folder to use and, when it is not the one asked for, why.

    As root, PostgreSQL runs as `nobody`, which must reach the folder (a clone under /root is
    out of its reach): then a folder under /var/tmp is used instead of failing.
    """
    if os.geteuid() != 0:
        return data_dir, None
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        return data_dir, None
    if reachable_by(data_dir, user.pw_uid, user.pw_gid):
        return data_dir, None
    fallback = fallback_data_dir(data_dir)
    return fallback, (
        f"{data_dir.absolute()} cannot be reached by the user {UNPRIVILEGED_USER!r} that runs PostgreSQL "
        f"(we run as root); using {fallback} instead (set CLIMABOROUGH_DATA_DIR or --data-dir to choose)"
    )
