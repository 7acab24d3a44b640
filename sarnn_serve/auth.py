"""API keys: who is calling, and whether they may touch a session.

With keys off (the default) every caller is anonymous, identified for quotas by its client IP,
and may drive any session whose id it knows. With keys on, a session belongs to the key that
opened it; any other non-admin key is told it does not exist.
"""

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from sarnn_serve.errors import Unauthorized
from sarnn_serve.settings import Settings


@dataclass(frozen=True)
class Principal:
    """The caller: `id` owns sessions and carries quotas; `admin` may see every session."""

    id: str
    admin: bool = False
    authenticated: bool = False


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, held as SHA-256 digests only."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        self._by_digest = keys

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    @classmethod
    def from_settings(cls, settings: Settings) -> "KeyRing":
        """Keys from SARNN_API_KEYS ('key' or 'key:admin') and SARNN_API_KEYS_FILE."""
        keys: dict[str, Principal] = {}
        for entry in filter(None, (e.strip() for e in settings.api_keys.split(","))):
            key, _, role = entry.partition(":")
            digest = _digest(key)
            keys[digest] = Principal(f"key-{digest[:12]}", role == "admin", True)
        if settings.api_keys_file is not None:
            keys.update(parse_key_file(settings.api_keys_file))
        return cls(keys)

    def authenticate(self, authorization: str | None, client_host: str | None) -> Principal:
        """The caller named by an `Authorization: Bearer <key>` value; Unauthorized if keys are
        on and it is missing or unknown."""
        if not self.enabled:
            return Principal(f"ip-{client_host or 'unknown'}")
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        digest = _digest(key.strip())
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthorized("unknown API key")


def parse_key_file(path: Path) -> dict[str, Principal]:
    """Lines 'sha256:<hex> <name> [admin]'; '#' starts a comment. ValueError names a bad line."""
    keys: dict[str, Principal] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        algo, _, digest = fields[0].partition(":")
        if algo != "sha256" or len(digest) != 64 or len(fields) not in (2, 3):
            raise ValueError(f"{path}:{number}: expected 'sha256:<64 hex> <name> [admin]'")
        admin = len(fields) == 3 and fields[2] == "admin"
        if len(fields) == 3 and not admin:
            raise ValueError(f"{path}:{number}: the only role is 'admin', got {fields[2]!r}")
        keys[digest.lower()] = Principal(f"key-{fields[1]}", admin, True)
    return keys
