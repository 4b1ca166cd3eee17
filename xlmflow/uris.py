"""Credentials embedded in URIs: refuse them on the way in, redact them on the way out.

`s3://KEY:SECRET@bucket/x` reaches botocore as the bucket name `KEY:SECRET@bucket`, and its validation
error prints the secret; the same string would also land in Prefect's flow-run parameters and in logs.
So a URI with userinfo is refused before any library sees it, and every message we print is redacted.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# userinfo anywhere in a message: `scheme://user[:pass]@` or a bare `user:pass@host`
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>[^\s\"'<>/@:]+)(?P<pw>:(?!//)[^\s\"'<>@]*)?@"
)

REFUSED = (
    "credentials embedded in a URI are refused (they would end up in logs and run records); "
    "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role instead"
)


def has_userinfo(uri: str) -> bool:
    """True for `scheme://user@host…` and `scheme://user:pass@host…`, also when the secret has a '/'."""
    if not isinstance(uri, str) or not _SCHEME.match(uri):
        return False
    rest = uri.split("://", 1)[1]
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        return True
    # an AWS secret may contain '/', which ends the authority early: `s3://KEY:abc/def@bucket/x`
    if ":" in authority and "@" in rest:
        after_colon = authority.split(":", 1)[1]
        return not after_colon.isdigit()  # `host:8080/path@x` is a port, not a password
    return False


def redact(text: str) -> str:
    """Replace the userinfo of every URI (and bare `user:pass@host`) in `text` with `***`."""

    def sub(m: re.Match) -> str:
        scheme, pw = m["scheme"] or "", m["pw"]
        if not scheme and pw is None:
            return m[0]  # `name@host` without a scheme or password: an e-mail address, not a credential
        if scheme and pw and re.fullmatch(r":\d+/.*", pw):
            return m[0]  # a port followed by a path that happens to contain '@'
        return f"{scheme}***@"

    return _USERINFO.sub(sub, text)
