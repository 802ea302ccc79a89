"""API-key authentication: the key comes from a file or the environment (never the command line, where any
local user can read it in the process list) and is checked in constant time."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from slimformer.errors import ConfigError
from slimformer.serve.schema import ServeError

API_KEY_ENV = "SLIMFORMER_API_KEY"
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def load_api_key(api_key_file: str | Path | None = None) -> str | None:
    """The key in `api_key_file` (surrounding whitespace dropped), else in $SLIMFORMER_API_KEY, else None."""
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            key = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc}") from exc
        if not key:
            raise ConfigError(f"the API key file {path} is empty; write the key in it (one line)")
        return key
    if API_KEY_ENV in os.environ:
        key = os.environ[API_KEY_ENV].strip()
        if not key:
            raise ConfigError(f"${API_KEY_ENV} is set but empty; set it to the key or unset it")
        return key
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve without a key on an interface other machines can reach, unless told `insecure`."""
    if api_key is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without an API key: set ${API_KEY_ENV} or --api-key-file, "
            "or pass --insecure to serve without authentication"
        )


class ApiKeyAuth:
    """Checks `Authorization: Bearer <key>` headers against one key."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def check(self, authorization: str | None) -> None:
        """Return when the header carries the key; raise a 401 ServeError otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "this endpoint needs an API key: send 'Authorization: Bearer <key>'"
            raise ServeError(401, "unauthorized", message, headers=CHALLENGE)
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes the client sent
        sent = token.strip().encode("latin-1", errors="replace")
        if not hmac.compare_digest(sent, self._key):
            raise ServeError(401, "unauthorized", "the API key is not valid", headers=CHALLENGE)
