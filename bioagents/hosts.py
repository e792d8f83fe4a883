"""Host names as the `Host` header and `ALLOWED_HOSTS` spell them (SPEC §12)."""

from __future__ import annotations

import ipaddress
import re

ANY_HOST = "*"
LOOPBACK_NAMES = frozenset({"localhost"})

# host [":" port], where host is a name, an IPv4 address or a bracketed IPv6 address.
_AUTHORITY = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._~!$&'()*+,;=%-]+))(?::\d{0,5})?"
)


def host_name(authority: str) -> str | None:
    """The name in `host[:port]`, lower-cased and without a trailing dot; None if malformed."""
    match = _AUTHORITY.fullmatch(authority.strip())
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            return str(ipaddress.IPv6Address(match["ipv6"]))
        except ValueError:
            return None
    return match["name"].lower().removesuffix(".") or None


def is_loopback(name: str) -> bool:
    """`localhost`, or a loopback address written out (127.0.0.0/8, ::1)."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
