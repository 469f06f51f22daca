"""LiveKit API keys and the verification of what they sign.

LiveKit signs each webhook with an API key's secret: the ``Authorization`` header holds a
raw JWT (no ``Bearer``), HS256, whose ``iss`` names the key and whose ``sha256`` claim is
the standard base64 of the SHA-256 of the raw body. The keys come from the source's
configuration, from ``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET`` (as LiveKit's server SDKs
read them), and from a key file in the format of ``livekit-server --key-file`` (YAML,
``key: secret`` per line).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import jwt
import jwt.warnings
import yaml

from rtclake.errors import RtclakeError

# A short secret is the operator's choice (LiveKit's dev key is "secret"); a warning on
# every webhook would say nothing new.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


class SignatureError(RtclakeError):
    """A webhook whose signature, time or body hash does not hold (HTTP 401)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def load_keys(
    configured: Mapping[str, str], key_file: Path | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every API key and its secret: the key file's, then the environment's, then the
    configuration's (a later one wins for the same key)."""
    keys: dict[str, str] = {}
    if key_file is not None:
        try:
            loaded = yaml.safe_load(key_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"LiveKit key file {key_file}: {exc}") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise ValueError(f"LiveKit key file {key_file}: expected lines 'APIkey: secret'")
        keys.update(loaded)
    env = os.environ if environ is None else environ
    if env.get("LIVEKIT_API_KEY") and env.get("LIVEKIT_API_SECRET"):
        keys[env["LIVEKIT_API_KEY"]] = env["LIVEKIT_API_SECRET"]
    keys.update(configured)
    return keys


def body_hash(body: bytes) -> str:
    """The ``sha256`` claim LiveKit puts in a webhook's token for ``body``."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def verify(header: str | None, body: bytes, keys: Mapping[str, str], leeway: float) -> str:
    """Check a webhook's ``Authorization`` header against ``body``; return the API key it
    was signed with, or raise :class:`SignatureError` with the reason."""
    if not header:
        raise SignatureError("unsigned", "the Authorization header (LiveKit's JWT) is missing")
    token = header.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise SignatureError("bad_token", f"the Authorization header is not a JWT: {exc}") from exc
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise SignatureError("unknown_key", "the token names no API key (iss)")
    secret = keys.get(issuer)
    if secret is None:
        raise SignatureError("unknown_key", f"API key {issuer[:64]!r} is not configured")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=leeway,
            options={"require": ["exp", "iss"], "verify_nbf": True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise SignatureError("expired", "the token has expired (exp)") from exc
    except jwt.ImmatureSignatureError as exc:
        raise SignatureError("not_yet_valid", "the token is not valid yet (nbf)") from exc
    except jwt.InvalidSignatureError as exc:
        raise SignatureError(
            "bad_signature", f"the token is not signed by {issuer!r}'s secret"
        ) from exc
    except jwt.PyJWTError as exc:
        raise SignatureError("bad_token", f"the token is refused: {exc}") from exc
    claimed = claims.get("sha256")
    if not isinstance(claimed, str):
        raise SignatureError("no_body_hash", "the token has no sha256 claim for the body")
    if not hmac.compare_digest(claimed.encode(), body_hash(body).encode()):
        raise SignatureError(
            "body_hash_mismatch", "the body is not the one the token signed (sha256)"
        )
    return issuer
