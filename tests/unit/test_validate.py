from typing import Callable

import pytest

from agent import validate


@pytest.mark.parametrize("value", ["10.0.0.4", "ray-head", "head.example.internal"])
def test_host_accepts(value: str) -> None:
    assert validate.host(value) == value


@pytest.mark.parametrize("value", ["10.0.0.256", "1.2.3", "-bad", "a b", "", "x" * 300,
                                   "::1", "[::1]", "10.0.0.4:6379", "10.0.0.4:x"])
def test_host_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        validate.host(value)


@pytest.mark.parametrize("value,expected", [("1", 1), ("65535", 65535), (8000, 8000)])
def test_port_accepts(value: str, expected: int) -> None:
    assert validate.port(value) == expected


@pytest.mark.parametrize("value", ["0", "65536", "-1", "http", "80.5"])
def test_port_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        validate.port(value)


@pytest.mark.parametrize("value,expected", [
    ("4gb", 4 * 1024**3), ("4GB", 4 * 1024**3), ("512m", 512 * 1024**2),
    ("1.5GiB", 3 * 1024**3 // 2),
    ("1024", 1024), (2048, 2048),
])
def test_size(value: str, expected: int) -> None:
    assert validate.size(value) == expected


@pytest.mark.parametrize("value", ["4 lots", "gb", "-4gb", "0", ""])
def test_size_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        validate.size(value)


@pytest.mark.parametrize("value", [
    "syntho-ray:latest", "registry.example:5000/syntho/syntho-ray:1.2.3", "postgres",
    "redis:6.2-alpine", "localhost:5000/x@sha256:" + "a" * 64, "localhost/x",
    "x@sha256:" + "b" * 64, "Reg.Example:5000/x:1",
])
def test_image_accepts(value: str) -> None:
    assert validate.image(value) == value


@pytest.mark.parametrize("value", ["Syntho-Ray", "UPPER/case", "ray::latest", "ray:", "", "a b",
                                   "ray:lat est"])
def test_image_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        validate.image(value)


@pytest.mark.parametrize("ref,registry,expected", [
    ("syntho-ray:latest", "reg.example:5000", "reg.example:5000/syntho-ray:latest"),
    ("syntho/syntho-ray:1", "reg.example", "reg.example/syntho/syntho-ray:1"),
    ("other.example/syntho-ray:1", "reg.example", "other.example/syntho-ray:1"),
    ("localhost/x:1", "reg.example", "localhost/x:1"),
    ("syntho-ray:latest", None, "syntho-ray:latest"),
    ("syntho-ray@sha256:" + "a" * 64, "reg.example", "reg.example/syntho-ray@sha256:" + "a" * 64),
    ("host:5000/x@sha256:" + "a" * 64, "reg.example", "host:5000/x@sha256:" + "a" * 64),
    ("host:5000/syntho/ray:1", "reg.example", "host:5000/syntho/ray:1"),
    ("localhost/x", "reg.example", "localhost/x"),
    ("postgres", "reg.example:5000", "reg.example:5000/postgres"),
])
def test_qualify(ref: str, registry: str | None, expected: str) -> None:
    assert validate.qualify(ref, registry) == expected


# ---- found by tests/unit/test_fuzz_cli.py ----

@pytest.mark.parametrize("parse,value", [
    (validate.positive_float, "nan"), (validate.positive_float, "inf"),
    (validate.positive_float, "1e999"), (validate.wait, "nan"), (validate.wait, "inf"),
    (validate.size, "9" * 400), (validate.size, "99999999t"),
    (validate.existing_file, "x" * 5000), (validate.existing_path, "x" * 5000),
    (validate.user_file, "x" * 5000), (validate.user_file, "~no-such-user-zq/key"),
    (validate.existing_file, "no\nsuch"), (validate.existing_path, "no\x1bsuch"),
    (validate.user_file, "no\u2028such"),
])
def test_a_bad_value_is_a_value_error_of_one_printable_line(parse: Callable[[str], object],
                                                             value: str) -> None:
    """Not a crash (OverflowError, OSError, RuntimeError), not a value taken (nan, inf), not a
    message that breaks the line or writes a terminal escape."""
    with pytest.raises(ValueError) as refused:
        parse(value)
    assert str(refused.value).isprintable()


@pytest.mark.parametrize("parse,value", [
    (validate.postgres_url, "postgresql://u:Secret99@[Secret99]/db"),
    (validate.redis_url, "redis://:Secret99@[Secret99]"),
    (validate.postgres_url, "postgresql://u:Secret99@[::1"),
])
def test_a_bad_url_is_refused_without_quoting_a_part_of_it(parse: Callable[[str], object],
                                                           value: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse(value)
    assert "Secret99" not in str(refused.value) and "not a URL of the form" in str(refused.value)


def test_a_printable_path_is_shown_as_typed() -> None:
    with pytest.raises(ValueError, match="^no-such-file is not a readable file$"):
        validate.existing_file("no-such-file")
    assert validate.wait("0") == 0 and validate.positive_float("1.5") == 1.5


# ---- numbers: ASCII digits only, and a bound for each ------------------------------------------

FULL_WIDTH_80 = "\uff18\uff10"  # 80 in full-width digits: int() takes it, as it takes 1_000


@pytest.mark.parametrize("parse,value", [
    (validate.port, FULL_WIDTH_80), (validate.port, "8_0"), (validate.port, "١٢٣"),
    (validate.positive_int, FULL_WIDTH_80), (validate.positive_int, "1_000"),
    (validate.count, FULL_WIDTH_80), (validate.count, "1_000"),
    (validate.nofile, "65_536"), (validate.nofile, "\uff16\uff15\uff15\uff13\uff16"),
    (validate.seconds, "6_0"), (validate.positive_float, "1_5"),
    (validate.positive_float, "\uff11.5"), (validate.wait, "3_0"), (validate.wait, FULL_WIDTH_80),
    (validate.size, "\uff14gb"), (validate.size, "4_096"), (validate.duration, "\uff11\uff12h"),
    (validate.since, "\uff11\uff10m"),
])
def test_numbers_take_ascii_digits_only(parse: Callable[[str], object], value: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse(value)
    assert str(refused.value).isprintable()


@pytest.mark.parametrize("parse,value,most", [
    (validate.nofile, str(validate.NOFILE_MAX + 1), validate.NOFILE_MAX),
    (validate.nofile, "9" * 30, validate.NOFILE_MAX),
    (validate.positive_int, str(validate.COUNT_MAX + 1), validate.COUNT_MAX),
    (validate.positive_int, "9" * 5000, validate.COUNT_MAX),
    (validate.count, str(validate.COUNT_MAX + 1), validate.COUNT_MAX),
    (validate.seconds, str(validate.SECONDS_MAX + 1), validate.SECONDS_MAX),
    (validate.wait, str(validate.SECONDS_MAX + 1), validate.SECONDS_MAX),
    (validate.wait, "1e300", validate.SECONDS_MAX),
    (validate.positive_float, str(validate.COUNT_MAX + 1), validate.COUNT_MAX),
], ids=lambda v: str(v)[:24])
def test_every_number_has_an_upper_bound(parse: Callable[[str], object], value: str,
                                          most: int) -> None:
    with pytest.raises(ValueError) as refused:
        parse(value)
    message = str(refused.value)
    assert f"at most {most}" in message and message.isprintable() and len(message) < 200


def test_the_bounds_themselves_and_plain_numbers_are_taken() -> None:
    assert validate.nofile(str(validate.NOFILE_MAX)) == validate.NOFILE_MAX == 2**31 - 64
    assert validate.nofile("65536") == 65536 and validate.nofile(" 20000 ") == 20000
    assert validate.positive_int(str(validate.COUNT_MAX)) == validate.COUNT_MAX
    assert validate.count("0") == 0 and validate.seconds("60") == 60
    assert validate.wait(str(validate.SECONDS_MAX)) == validate.SECONDS_MAX
    assert validate.wait("0.5") == 0.5 and validate.positive_float("1.5e1") == 15.0
    assert validate.port(" 8080 ") == 8080 and validate.port(443) == 443


@pytest.mark.parametrize("given, taken", [("10m", "10m"), ("1g", "1g"), ("20MB", "20m"),
                                          ("2048k", "2048k")])
def test_a_log_size_is_dockers(given: str, taken: str) -> None:
    assert validate.log_size(given) == taken


@pytest.mark.parametrize("given", ["10", "ten", "0m", "512k", "-5m", "1t"])
def test_a_log_size_that_docker_would_not_take_or_that_keeps_nothing_is_refused(
        given: str) -> None:
    with pytest.raises(ValueError, match="log size|below 1m"):
        validate.log_size(given)
