"""Parsers for the values an operator types: each returns the value or raises ValueError
with a message that says what was expected."""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# The reference grammar of docker/distribution, simplified: [host[:port]/]path[:tag][@digest].
_IMAGE = re.compile(
    r"^(?:(?P<host>[A-Za-z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+:[a-f0-9]{32,}))?$"
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def host(value: str) -> str:
    """An IPv4/IPv6 address or a hostname."""
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not an IP address or hostname")
    return value


def ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def port(value: str | int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a port number (1-65535)") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"{number} is out of range for a port (1-65535)")
    return number


def size(value: str | int) -> int:
    """A size like 4gb, 512m, 1.5GiB or a plain byte count; returns bytes."""
    if isinstance(value, int):
        number = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size (examples: 4gb, 512mb, 1073741824)")
        number = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if number <= 0:
        raise ValueError(f"{value!r} must be larger than zero")
    return number


def token(value: str) -> str:
    """A Ray token as the head writes it: one word of at least 16 characters."""
    value = value.strip()
    if len(value) < 16 or any(ch.isspace() for ch in value):
        raise ValueError("the Ray token given is not valid: it must be one word of at least 16 "
                         "characters, as the head wrote it in its data dir's ray-token")
    return value


def has_registry(ref: str) -> bool:
    """Whether an image reference names a registry (docker's rule: the first component is
    a registry when it looks like a host)."""
    first, _, rest = ref.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def qualify(ref: str, registry: str | None) -> str:
    """The reference under registry, unless it names a registry of its own."""
    return ref if not registry or has_registry(ref) else f"{registry}/{ref}"


def image(value: str) -> str:
    value = value.strip()
    first, _, rest = value.partition("/")
    uppercase_path = bool(rest) and not has_registry(value) and first != first.lower()
    if not value or not _IMAGE.match(value) or uppercase_path:
        raise ValueError(
            f"{value!r} is not an image reference (example: registry.example/syntho-ray:1.2)")
    return value


def positive_int(value: str | int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be larger than zero")
    return number


def positive_float(value: str | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be larger than zero")
    return number


def name(value: str) -> str:
    """A name usable in container and volume names: letters, digits, '-' and '_'."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,30}", value):
        raise ValueError(f"{value!r} must be 1-31 lowercase letters, digits, '-' or '_'")
    return value
