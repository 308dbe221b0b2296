"""Credentials stay in the environment: `redact` masks them in anything the pipeline logs or writes.

Masked with `***`: the value of every environment variable whose name says it holds a credential (TOKEN,
SECRET, PASSWORD, KEY, CREDENTIAL, AUTH; values of 6 characters or more that are not paths), and the
password of any URL (`scheme://user:password@host`). `url_password(text)` finds the latter, so that the
config can refuse credentials written into params.
"""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|(^|_)(API_)?KEY(_|$)|CREDENTIAL|AUTH", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<password>[^@\s/]+)(?=@)", re.IGNORECASE)
MASK = "***"


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Credential values in the environment, longest first (so a value containing another is masked whole)."""
    env = os.environ if env is None else env
    values = {
        value
        for name, value in env.items()
        if _SECRET_NAME.search(name) and not name.endswith("_SOCK") and len(value) >= 6 and not os.path.exists(value)
    }
    return sorted(values, key=len, reverse=True)


def url_password(text: str) -> str | None:
    found = _URL_PASSWORD.search(text)
    return found.group("password") if found else None


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
