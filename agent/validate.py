"""Parsers for the values an operator types: each returns the value or raises ValueError
with a message that says what was expected."""

from __future__ import annotations

import ipaddress
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from agent.engine import registry_of

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# The reference grammar of docker/distribution, simplified: [host[:port]/]path[:tag][@digest].
_IMAGE = re.compile(
    r"^(?:(?P<host>[A-Za-z0-9.-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+:[a-f0-9]{32,}))?$"
)
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

# Numbers: ASCII digits only (int() and float() also take full-width or Arabic-Indic digits
# and 1_000, which no engine, Ray or shell reads as meant), and an upper bound for each, checked
# here, before the engine or Ray sees a value.
_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# The open-files limit: Linux's own ceiling (fs.nr_open cannot be set higher: sysctl_nr_open_max,
# INT_MAX rounded down to a multiple of 64); the engine's host usually allows less (the host check).
NOFILE_MAX = 2**31 - 64
# Seconds (timeouts, waits): ten years, as for `logs --since`.
SECONDS_MAX = 3650 * 86400
# Counts (workers, CPUs, nodes, backups kept, log lines, minutes, GB) and --cpus: a million,
# more than any VM or cluster of them has, keeps or prints.
COUNT_MAX = 1_000_000


def _shown(value: object) -> str:
    """A number as a message quotes it: 5000 digits cut short."""
    text = printable(value)
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} characters)"


def _digits(value: str | int, what: str) -> int:
    """A whole number written in ASCII digits (an int from a YAML file as it is)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"{_shown(value)} is not {what} (ASCII digits 0-9 only)")
    if len(text.lstrip("+-").lstrip("0")) > 20:  # past every bound (int() refuses 4300 digits)
        return -(10**20) if text.startswith("-") else 10**20
    return int(text)


def _at_most(number: float, most: int, value: object, what: str) -> None:
    if number > most:
        raise ValueError(f"{_shown(value)} is too large for {what}: at most {most}")


def _address(value: str) -> str:
    """An IPv4/IPv6 address or a hostname."""
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not an IP address or hostname")
    return value


def host(value: str) -> str:
    """A machine of the Ray cluster (the head, a node): an IPv4 address or a hostname.

    IPv6 is refused, in one line before anything changes: Ray 2.60 rejects `--address=::1:6379`
    and, given `[::1]:6379`, dials the node's IPv4 address instead; its IPv6 support was still
    landing in parts, and the agent's join checks and the app's Ray address are IPv4 forms.
    """
    shown = printable(value.strip())
    version: int = 0
    try:
        version = ipaddress.ip_address(value.strip().strip("[]")).version
    except ValueError:
        pass
    if version == 6:
        raise ValueError(f"{shown} is an IPv6 address, which the Ray cluster cannot use (Ray "
                         "joins over IPv4): give an IPv4 address or a hostname")
    name, sep, number = value.strip().rpartition(":")
    if sep and number.isdigit():
        try:
            _address(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"{shown} has a port: give the address alone ({name}); Ray's "
                             "port on the head is always 6379")
    return _address(value)


def ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def port(value: str | int) -> int:
    number = _digits(value, "a port number (1-65535)")
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
        bytes_ = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if not math.isfinite(bytes_) or bytes_ >= 2**63:  # 400 digits is infinity to float()
            raise ValueError(f"{value!r} is too large a size")
        number = int(bytes_)
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


def qualify(ref: str, registry: str | None) -> str:
    """The reference under registry, unless it names a registry of its own."""
    return ref if not registry or registry_of(ref) else f"{registry}/{ref}"


def image(value: str) -> str:
    value = value.strip()
    first, _, rest = value.partition("/")
    # An uppercase first component is only allowed as a registry host.
    uppercase_path = bool(rest) and not registry_of(value) and first != first.lower()
    if not value or not _IMAGE.match(value) or uppercase_path:
        raise ValueError(
            f"{value!r} is not an image reference (example: registry.example/syntho-ray:1.2)")
    return value


_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
PULL_POLICIES = ("missing", "always", "never")


def tag(value: str) -> str:
    value = str(value).strip()
    if not _TAG.match(value):
        raise ValueError(f"{value!r} is not an image tag (letters, digits, '_', '.' and '-'; "
                         "example: 1.4.2)")
    return value


def pull_policy(value: str) -> str:
    if value not in PULL_POLICIES:
        raise ValueError(f"{value!r} is not one of {', '.join(PULL_POLICIES)}")
    return value


def _positive(value: str | int, most: int, what: str) -> int:
    number = _digits(value, "a whole number")
    if number <= 0:
        raise ValueError(f"{_shown(value)} must be larger than zero")
    _at_most(number, most, value, what)
    return number


_LOG_SIZE = re.compile(r"^([1-9][0-9]{0,5})([kmg])$")


def log_size(v: str) -> str:
    """A log file's size as Docker's json-file driver takes it: a number and k, m or g."""
    text = str(v).strip().lower()
    found = _LOG_SIZE.match(text.removesuffix("b") if text.endswith(("kb", "mb", "gb")) else text)
    if not found:
        raise ValueError(f"{printable(v)} is not a log size: give a number and k, m or g "
                         "(10m, 1g)")
    number, unit = found.groups()
    if int(number) * {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit] < 1 << 20:
        raise ValueError(f"{printable(v)} is below 1m: a log file that small rotates at every "
                         "burst and keeps little")
    return f"{number}{unit}"


def positive_int(value: str | int) -> int:
    """A count (workers, CPUs, backups kept, minutes, GB): 1 to COUNT_MAX."""
    return _positive(value, COUNT_MAX, "a count")


def nofile(value: str | int) -> int:
    """An open-files limit: 1 to what Linux allows at most (NOFILE_MAX)."""
    return _positive(value, NOFILE_MAX, "an open-files limit (Linux's ceiling)")


def seconds(value: str | int) -> int:
    """A whole number of seconds: 1 to ten years (SECONDS_MAX)."""
    return _positive(value, SECONDS_MAX, "a number of seconds (ten years)")


def _decimal(value: str | float, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip()
        if not _DECIMAL.fullmatch(text):  # float() takes nan, inf, 1_0 and full-width digits
            raise ValueError(f"{_shown(value)} is not {what} (ASCII digits 0-9, a '.' and an "
                             "exponent)")
        number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError(f"{_shown(value)} is not a finite number")
    return number


def positive_float(value: str | float) -> float:
    """--cpus: larger than zero, at most COUNT_MAX."""
    number = _decimal(value, "a number")
    if number <= 0:
        raise ValueError(f"{_shown(value)} must be larger than zero")
    _at_most(number, COUNT_MAX, value, "a number of CPUs")
    return number


def days(value: str | float) -> float:
    """--ray-log-retention-days: zero (no wait) or more, at most ten years."""
    number = _decimal(value, "a number of days")
    if number < 0:
        raise ValueError(f"{_shown(value)} is negative: give 0 or more days")
    _at_most(number, 3650, value, "a number of days")
    return number


def name(value: str) -> str:
    """A name usable in container and volume names: letters, digits, '-' and '_'."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,30}", value):
        raise ValueError(f"{value!r} must be 1-31 lowercase letters, digits, '-' or '_'")
    return value


# ---- the options' own parsers (agent/config.py names one per option) ----

def instance(v: str) -> str:
    return name(str(v)) if str(v) else ""


def network(v: str) -> str:
    v = str(v)
    return v if v == "host" else name(v)


def wait(v: str) -> float:
    """Seconds to wait: 0 (forever) to ten years (SECONDS_MAX)."""
    number = _decimal(v, "a number of seconds (0 waits forever)")
    if number < 0:
        raise ValueError(f"{_shown(v)} must be 0 (forever) or a positive number of seconds")
    _at_most(number, SECONDS_MAX, v, "a wait (ten years; 0 waits forever)")
    return number


def host_port(v: str) -> str:
    name, sep, number = v.rpartition(":")
    if not sep:
        name, number = v, ""
    _address(name)
    if number:
        port(number)
    return v


def registry(v: str) -> str:
    if "/" in str(v):
        raise ValueError(f"{v!r} must be a registry host[:port], without a path")
    return host_port(v)


def printable(text: object) -> str:
    """Text as a one-line message shows it: as it is, or quoted (repr) when it holds a line
    break, a terminal escape or another character that does not print."""
    shown = str(text)
    return shown if shown.isprintable() else repr(shown)


def _found(path: Path, test: Callable[[Path], bool]) -> bool:
    try:
        return test(path)
    except OSError as exc:  # a name too long for the file system, a loop of links ...
        raise ValueError(f"{printable(path)}: {exc.strerror or exc}") from None


def existing_path(v: str) -> Path:
    path = Path(str(v))
    if not _found(path, Path.exists):
        raise ValueError(f"{printable(path)} does not exist")
    return path


def existing_dir(v: str) -> Path:
    path = existing_path(v)
    if not path.is_dir():
        raise ValueError(f"{printable(str(path))} is not a directory")
    return path


def existing_file(v: str) -> Path:
    path = Path(str(v))
    if not _found(path, Path.is_file):
        raise ValueError(f"{printable(path)} is not a readable file")
    return path


def user_file(v: str) -> Path:
    """A local file that may be given as ~/...: config files and env variables are not
    expanded by a shell."""
    try:
        expanded = Path(v).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        raise ValueError(f"{printable(v)}: cannot find the home directory it starts with") from None
    return existing_file(str(expanded))


def protocol(v: str) -> str:
    if str(v) not in ("http", "https"):
        raise ValueError(f"{v!r} must be http or https")
    return str(v)


def word(v: str) -> str:
    if not str(v).strip() or any(ch.isspace() for ch in str(v)):
        raise ValueError("must be one word, not empty")
    return str(v)


def email(v: str) -> str:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", str(v)):
        raise ValueError(f"{v!r} is not an e-mail address")
    return str(v)


def password(v: str) -> str:
    if len(str(v)) < 8 or "\n" in str(v):
        raise ValueError("a password must be one line of at least 8 characters")
    return str(v)


def _url(v: str, schemes: tuple[str, ...], example: str) -> str:
    try:
        parts = urlsplit(str(v))  # its errors may quote a part of the URL: never shown
        ok = parts.scheme in schemes and bool(parts.hostname)
        if ok:
            _address(parts.hostname or "")
            parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"not a URL of the form {example}")
    return str(v)


def https_url(v: str) -> str:
    return _url(v, ("https",), "https://HOST[:PORT]/PATH")


def http_url(v: str) -> str:
    return _url(v, ("http", "https"), "http(s)://HOST[:PORT]")


TLS_MODES = ("off", "cert", "acme", "internal")


def tls_mode(v: str) -> str:
    if str(v) not in TLS_MODES:
        raise ValueError(f"{v!r} must be one of {', '.join(TLS_MODES)}")
    return str(v)


def postgres_url(v: str) -> str:
    return _url(v, ("postgresql", "postgres"), "postgresql://USER:PASSWORD@HOST[:PORT]")


def redis_url(v: str) -> str:
    return _url(v, ("redis",), "redis://[:PASSWORD@]HOST[:PORT]")


def address_port(v: str) -> tuple[str, int]:
    address, sep, number = v.rpartition(":")
    if not sep:
        raise ValueError(f"{v!r} must be ADDRESS:PORT, for example 127.0.0.1:5432")
    return ip(address), port(number)


def provider(v: str) -> str:
    if str(v) not in ("aws", "gcp", "azure", "local"):
        raise ValueError(f"{v!r} is not a provider: aws, gcp, azure or local")
    return str(v)


def count(v: str) -> int:
    """A count that may be 0 (nodes, `logs --tail` lines): 0 to COUNT_MAX."""
    number = _digits(v, "a whole number")
    if number < 0:
        raise ValueError(f"{_shown(v)} must be 0 or more")
    _at_most(number, COUNT_MAX, v, "a count")
    return number


_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(v: str) -> int:
    """A duration like 12h, 30m, 1d or a number of seconds; 0 turns the thing off."""
    m = _DURATION.match(v)
    if not m:
        raise ValueError(f"{printable(v)} is not a duration (examples: 12h, 30m, 1d, 0 = off)")
    seconds = int(m.group(1)) * _SECONDS[m.group(2)]
    if 0 < seconds < 60 or seconds > 366 * 86400:
        raise ValueError(f"{printable(v)} must be 0 (off) or from 1m to 366d")
    return seconds


_RFC3339 = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
                      r"(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def since(v: str, now: float | None = None) -> float:
    """`logs --since`: a duration back from now (30s, 10m, 2h, 1d; a bare number is seconds)
    or an RFC 3339 time (2024-05-01T10:00:00Z); the Unix time it names."""
    text = str(v).strip()
    m = _DURATION.match(text)
    if m:
        seconds = int(m.group(1)) * _SECONDS[m.group(2)]
        if seconds > 3650 * 86400:
            raise ValueError(f"{printable(v)} is too long a duration (at most 3650d)")
        return (time.time() if now is None else now) - seconds
    t = _RFC3339.match(text)
    if not t:
        raise ValueError(f"{printable(v)} is not a duration or an RFC 3339 time (examples: "
                         "10m, 2h, 2024-05-01T10:00:00Z)")
    day, clock, fraction, zone = t.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:  # Python 3.9's fromisoformat takes 6 fractional digits at most, and no Z
        when = datetime.fromisoformat(f"{day}T{clock}.{(fraction or '0')[:6]:0<6}{zone}")
    except ValueError:
        raise ValueError(f"{printable(v)} is not a valid time (example: "
                         "2024-05-01T10:00:00Z)") from None
    if when.timestamp() <= 0:
        raise ValueError(f"{printable(v)} is before 1970")
    return when.timestamp()
