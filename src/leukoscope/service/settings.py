"""Server settings, checked once at start-up so a misconfigured server never listens."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from leukoscope.data.images import DEFAULT_MAX_PIXELS
from leukoscope.errors import LeukoscopeError

MIB = 1024 * 1024
MIN_TOKEN_LENGTH = 16


def default_data_dir() -> Path:
    """``$LEUKOSCOPE_DATA_DIR``, else ``$XDG_DATA_HOME/leukoscope`` (``~/.local/share/...``)."""
    given = os.environ.get("LEUKOSCOPE_DATA_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "leukoscope"


def default_db_path(data_dir: Path) -> Path:
    return (data_dir / "leukoscope.db").resolve()


def default_db_url(data_dir: Path) -> str:
    """SQLite in ``data_dir``: the database when no URL is given."""
    return f"sqlite:///{default_db_path(data_dir)}"


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def load_reviewers(path: Path) -> dict[str, str]:
    """Named reviewer tokens from a JSON file ``{"reviewer name": "token", ...}``, returned as
    token -> name. Each person signs with their own token, so every correction and sign-off
    records who made it without trusting a typed name."""
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LeukoscopeError(f"{path}: cannot read the reviewers file ({exc})") from None
    if not isinstance(given, dict) or not given:
        raise LeukoscopeError(f'{path}: expected a JSON object {{"reviewer name": "token"}}')
    tokens: dict[str, str] = {}
    for name, token in given.items():
        if not isinstance(token, str) or not name.strip():
            raise LeukoscopeError(f"{path}: reviewer {name!r} needs a non-empty name and a token")
        if token in tokens:
            raise LeukoscopeError(f"{path}: {name!r} and {tokens[token]!r} share a token")
        tokens[token] = name.strip()
    return tokens


class Settings(BaseModel):
    """What ``leukoscope serve`` runs with. The limits bound what one request can cost."""

    model_config = ConfigDict(frozen=True)

    model_path: Path
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    db_url: str | None = None
    """SQLAlchemy URL; ``None`` means SQLite in ``data_dir``."""
    token: str | None = Field(None, repr=False)
    reviewer_tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    """Named reviewer tokens (token -> reviewer name), see :func:`load_reviewers`."""
    max_file_bytes: int = Field(20 * MIB, gt=0)
    max_request_bytes: int = Field(256 * MIB, gt=0)
    max_files: int = Field(200, gt=0, le=1000)
    """Files per request (the multipart parser itself stops at 1000)."""
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    max_differential_cells: int = Field(100_000, gt=0)

    @model_validator(mode="after")
    def _exposed_needs_token(self) -> Self:
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the API token must have at least {MIN_TOKEN_LENGTH} characters")
        tokens = self.reviewer_tokens.items()
        short = [name for token, name in tokens if len(token) < MIN_TOKEN_LENGTH]
        if short:
            raise ValueError(
                f"reviewer tokens must have at least {MIN_TOKEN_LENGTH} characters "
                f"({', '.join(short)})"
            )
        if self.open_access and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without an API token: anyone on the network "
                "could read and change results; pass --token (or LEUKOSCOPE_TOKEN) or bind to "
                "127.0.0.1"
            )
        return self

    @property
    def open_access(self) -> bool:
        """No token of any kind: only this machine may connect, and only by a loopback name."""
        return self.token is None and not self.reviewer_tokens

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """``Host`` names a tokenless server answers: a web page that rebinds its own DNS name
        to 127.0.0.1 sends its name, not these."""
        return LOOPBACK_NAMES | {self.host}

    @property
    def database_path(self) -> Path:
        """The default SQLite file (used when no ``db_url`` is given)."""
        return default_db_path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.db_url or default_db_url(self.data_dir)
