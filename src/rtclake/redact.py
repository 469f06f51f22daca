"""Passwords out of text that rtclake prints or logs: a connection string's password (in
``lake.catalog``, a NATS URL) may reach an error message, a log line, ``/healthz`` or
``rtclake config``. Applied to every log line (:mod:`rtclake.logs`, tracebacks included),
to the catalog's errors and to the errors rtclake shows (queries, sinks)."""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:PASSWORD@host (the password up to the last "@" before the host's end: a
# "/", a "?", a "," between the URLs of a list, a quote or a space)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s:@\"',]*):[^/?#\s\"',]*@")
# nats://TOKEN@host: NATS's token login (a user without a password elsewhere stays shown)
_TOKEN = re.compile(r"(?P<head>\b(?:nats|tls)://)[^/?#\s:@\"',]+@", re.I)
# libpq's key=value form or a URL's query: password=PASSWORD, 'PASS WORD' or "PASS WORD"
_KEYWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s\"'&]+)", re.I
)


def redact(text: str) -> str:
    """``text`` with the password of each connection string in it replaced by ``***``."""
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _TOKEN.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KEYWORD.sub(lambda m: f"{m['head']}{MASK}", text)
