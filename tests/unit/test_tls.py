"""HTTPS, pure: the operator's certificate and key checked (and every way they can be wrong
refused in one line that holds no key material), ACME hosts, and the proxy's Caddyfile."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent import tls
from agent.config import AppSettings
from agent.errors import UsageError
from tests.support import certs
from tests.support.certs import CA, Key, key_pem, pem, write

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
HOST = "syntho.example.com"


@pytest.fixture(scope="module")
def ca() -> CA:
    return certs.make_ca(now=NOW)


def leaf(ca: CA, names: tuple[str, ...] = (HOST,), ips: tuple[str, ...] = (),
         key: Key | None = None, start: datetime = NOW - timedelta(days=1),
         end: datetime = NOW + timedelta(days=90), san: bool = True,
         ) -> tuple[x509.Certificate, Key]:
    return certs.leaf(ca, names, ips, key, start, end, san, now=NOW)


def refused(c: Path, k: Path, host: str = HOST, now: datetime = NOW) -> str:
    """The refusal's message, checked to be one line that quotes no PEM or key material."""
    with pytest.raises(UsageError) as e:
        tls.load_pair(c, k, host, now)
    msg = str(e.value)
    assert "\n" not in msg and "-----" not in msg
    if k.is_file():
        body = [line for line in k.read_text(errors="replace").splitlines()
                if line and not line.startswith("-----")]
        assert not any(line[:16] in msg for line in body if len(line) >= 16)
    return msg


# -- accepted ---------------------------------------------------------------------------------

def test_a_good_pair_is_described(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca, names=(HOST, "alt.example.com"), ips=("10.0.0.4",))
    c, k = write(tmp_path, pem(cert, ca.cert), key_pem(key))
    info = tls.load_pair(c, k, HOST, NOW)
    assert info.issuer == "CN=Test CA,O=Syntho test"
    assert info.subject == f"CN={HOST},O=Syntho test"
    assert info.names == (HOST, "alt.example.com", "10.0.0.4")
    assert info.not_after == NOW + timedelta(days=90)
    assert info.not_after.utcoffset() == timedelta(0)
    assert info.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert re.fullmatch(r"[0-9a-f]{64}", info.fingerprint)
    with pytest.raises(AttributeError):
        info.names = ()  # type: ignore[misc]


def test_the_fingerprint_is_stable_and_changes_with_the_certificate(tmp_path: Path,
                                                                      ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key))
    first, again = tls.load_pair(c, k, HOST, NOW), tls.load_pair(c, k, HOST, NOW)
    assert first == again
    renewed, _ = leaf(ca, key=key)  # the same key, a new certificate
    c.write_bytes(pem(renewed))
    assert tls.load_pair(c, k, HOST, NOW).fingerprint != first.fingerprint


def test_an_rsa_key_and_a_traditional_pem_are_read(tmp_path: Path, ca: CA) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(certs.name(HOST)).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=9))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    traditional = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    c, k = write(tmp_path, pem(cert), traditional)
    assert tls.load_pair(c, k, HOST, NOW).names == (HOST,)


@pytest.mark.parametrize("name, host, ok", [
    ("*.example.com", "syntho.example.com", True),
    ("*.example.com", "SYNTHO.Example.COM", True),
    ("*.example.com", "syntho.example.com.", True),
    ("*.example.com", "a.b.example.com", False),  # one label only
    ("*.example.com", "example.com", False),
    ("*.example.com", "syntho.example.org", False),
    ("Syntho.Example.com", "syntho.example.com", True),
    ("syntho.example.com", "other.example.com", False),
])
def test_wildcards_cover_one_label(tmp_path: Path, ca: CA, name: str, host: str,
                                   ok: bool) -> None:
    cert, key = leaf(ca, names=(name,))
    c, k = write(tmp_path, pem(cert), key_pem(key))
    if ok:
        assert tls.load_pair(c, k, host, NOW).names == (name,)
    else:
        assert f"is for {name}, not {host}" in refused(c, k, host)


@pytest.mark.parametrize("ip, host, ok", [
    ("10.0.0.4", "10.0.0.4", True),
    ("10.0.0.4", "10.0.0.5", False),
    ("2001:db8::1", "2001:db8:0:0::1", True),
    ("2001:db8::1", "[2001:db8::1]", True),
])
def test_ip_addresses_are_covered_by_ip_names(tmp_path: Path, ca: CA, ip: str, host: str,
                                              ok: bool) -> None:
    cert, key = leaf(ca, names=(), ips=(ip,))
    c, k = write(tmp_path, pem(cert), key_pem(key))
    if ok:
        assert tls.load_pair(c, k, host, NOW).names == (ip,)
    else:
        assert f"is for {ip}, not {host}" in refused(c, k, host)


def test_a_dns_name_does_not_cover_its_ip(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca, names=("10.0.0.4",))  # an IP written as a DNS name does not count
    c, k = write(tmp_path, pem(cert), key_pem(key))
    assert "not 10.0.0.4" in refused(c, k, "10.0.0.4")


def test_a_naive_now_is_utc(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca, end=NOW + timedelta(hours=1))
    c, k = write(tmp_path, pem(cert), key_pem(key))
    assert tls.load_pair(c, k, HOST, (NOW + timedelta(minutes=59)).replace(tzinfo=None))
    assert "expired" in refused(c, k, now=(NOW + timedelta(hours=2)).replace(tzinfo=None))


# -- refused ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_a_key_others_can_read_or_write_is_refused(tmp_path: Path, ca: CA, mode: int) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key), key_mode=mode)
    msg = refused(c, k)
    assert f"chmod 600 {k}" in msg and f"{mode:04o}" in msg


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_accepted(tmp_path: Path, ca: CA, mode: int) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key), key_mode=mode)
    assert tls.load_pair(c, k, HOST, NOW).names == (HOST,)


def test_missing_files_are_named(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key))
    gone = tmp_path / "nope.pem"
    msg = refused(gone, k)
    assert f"certificate file {gone} does not exist" in msg
    msg = refused(c, gone)
    assert f"key file {gone} does not exist" in msg


def test_a_directory_is_not_a_certificate(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key))
    d = tmp_path / "certs"
    d.mkdir()
    assert f"certificate file {d} is a directory" in refused(d, k)
    assert f"key file {d}" in refused(c, d)


def test_an_unreadable_certificate_is_named(tmp_path: Path, ca: CA) -> None:
    # A path through a regular file fails to open as any user, root included (ENOTDIR).
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key))
    inside = c / "cert.pem"
    msg = refused(inside, k)
    assert f"cannot read the certificate file {inside} (Not a directory)" in msg


@pytest.mark.parametrize("data, says", [
    (b"", "is not a PEM certificate: "),
    (b"hello\n", "is not a PEM certificate: "),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a PEM cert"),
])
def test_not_a_certificate(tmp_path: Path, ca: CA, data: bytes, says: str) -> None:
    _, key = leaf(ca)
    c, k = write(tmp_path, data, key_pem(key))
    msg = refused(c, k)
    assert says in msg and str(c) in msg


def test_swapped_files_are_suspected(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, key_pem(key), pem(cert))
    assert "swapped" in refused(c, k)
    c, k = write(tmp_path, pem(cert), pem(cert))
    assert "swapped" in refused(c, k)


@pytest.mark.parametrize("data", [
    b"", b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_not_a_key(tmp_path: Path, ca: CA, data: bytes) -> None:
    cert, _ = leaf(ca)
    c, k = write(tmp_path, pem(cert), data)
    msg = refused(c, k)
    assert f"{k} is not a PEM private key" in msg


def test_an_encrypted_key_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(key, b"secret passphrase"))
    msg = refused(c, k)
    assert "passphrase" in msg and str(k) in msg and "secret" not in msg


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, _ = leaf(ca)
    c, k = write(tmp_path, pem(cert), key_pem(ec.generate_private_key(ec.SECP256R1())))
    msg = refused(c, k)
    assert f"the key in {k} does not belong to the certificate in {c}" in msg


def test_a_chain_not_leaf_first_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(ca.cert, cert), key_pem(key))
    assert "not leaf first" in refused(c, k)


def test_an_expired_certificate_is_refused_with_its_date(tmp_path: Path, ca: CA) -> None:
    end = datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)
    cert, key = leaf(ca, start=end - timedelta(days=90), end=end)
    c, k = write(tmp_path, pem(cert), key_pem(key))
    assert "expired on 2026-11-30 08:15 UTC: renew it" in refused(c, k)


def test_a_certificate_not_yet_valid_is_refused_with_its_date(tmp_path: Path, ca: CA) -> None:
    start = datetime(2026, 12, 24, 0, 0, tzinfo=timezone.utc)
    cert, key = leaf(ca, start=start, end=start + timedelta(days=90))
    c, k = write(tmp_path, pem(cert), key_pem(key))
    msg = refused(c, k)
    assert "not valid before 2026-12-24 00:00 UTC" in msg and "clock" in msg


def test_a_certificate_for_other_names_lists_them(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca, names=("a.example.com", "*.b.example.com"), ips=("10.0.0.9",))
    c, k = write(tmp_path, pem(cert), key_pem(key))
    msg = refused(c, k)
    assert f"is for a.example.com, *.b.example.com, 10.0.0.9, not {HOST}" in msg


def test_many_names_are_cut_short(tmp_path: Path, ca: CA) -> None:
    names = tuple(f"n{i}.example.com" for i in range(12))
    cert, key = leaf(ca, names=names)
    c, k = write(tmp_path, pem(cert), key_pem(key))
    msg = refused(c, k)
    assert "n7.example.com and 4 more, not" in msg and "n8.example.com" not in msg


def test_a_certificate_without_a_san_is_refused(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca, names=(HOST,), san=False)  # the CN alone does not count
    c, k = write(tmp_path, pem(cert), key_pem(key))
    assert "names no host in a SubjectAlternativeName" in refused(c, k)


# -- expiry -----------------------------------------------------------------------------------

def test_expires_soon(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca, end=NOW + timedelta(days=30))
    c, k = write(tmp_path, pem(cert), key_pem(key))
    info = tls.load_pair(c, k, HOST, NOW)
    assert not tls.expires_soon(info, NOW)
    assert not tls.expires_soon(info, NOW + timedelta(days=15, minutes=1))
    assert tls.expires_soon(info, NOW + timedelta(days=16))
    assert tls.expires_soon(info, NOW + timedelta(days=31))  # already expired
    assert tls.expires_soon(info, NOW, days=30) and not tls.expires_soon(info, NOW, days=29)


# -- ACME hosts -------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["syntho.example.com", "a.b.co.uk", "SYNTHO.Example.com.",
                                  "x-1.example.io"])
def test_acme_hosts_ok(host: str) -> None:
    tls.acme_host_ok(host)


@pytest.mark.parametrize("host", ["10.0.0.4", "::1", "[2001:db8::1]"])
def test_acme_refuses_ip_addresses(host: str) -> None:
    with pytest.raises(UsageError, match="IP address cannot get a public certificate: give "
                                         "--frontend-host a domain name, or use --tls "
                                         "cert/internal"):
        tls.acme_host_ok(host)


@pytest.mark.parametrize("host, says", [
    ("syntho", "not a dotted DNS name"),
    ("localhost", "not a dotted DNS name"),
    ("", "not a dotted DNS name"),
    ("a..example.com", "not a dotted DNS name"),
    ("-a.example.com", "not a dotted DNS name"),
    ("under_score.example.com", "not a dotted DNS name"),
    ("*.example.com", "not a dotted DNS name"),
    ("1.2.3", "not a dotted DNS name"),
    ("a" * 64 + ".example.com", "not a dotted DNS name"),
    ("syntho.local", "under .local"),
    ("app.corp.internal", "under .internal"),
    ("app.localhost", "under .localhost"),
])
def test_acme_refuses_names_no_public_ca_certifies(host: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)) as e:
        tls.acme_host_ok(host)
    assert "\n" not in str(e.value) and "--tls cert/internal" in str(e.value)


# -- the Caddyfile ----------------------------------------------------------------------------

CERT_CADDYFILE = """\
# Written by syntho-agent; it is rewritten on every deploy.
# Caddy redirects http:// to https:// by itself for a site with a host name, and
# answers ACME HTTP challenges on port 80, so no :80 site is needed.
# WebSocket upgrades pass through reverse_proxy as they are.
{
\tadmin localhost:2019
\tservers {
\t\tprotocols h1 h2
\t}
}

syntho.example.com {
\ttls /etc/caddy/tls/cert.pem /etc/caddy/tls/key.pem
\trequest_body {
\t\tmax_size 512MiB
\t}
\theader Strict-Transport-Security "max-age=31536000"
\thandle /api/* {
\t\treverse_proxy backend:8000 {
\t\t\ttransport http {
\t\t\t\tdial_timeout 600s
\t\t\t\tread_timeout 600s
\t\t\t\twrite_timeout 600s
\t\t\t}
\t\t}
\t}
\thandle {
\t\treverse_proxy frontend:3000 {
\t\t\ttransport http {
\t\t\t\tdial_timeout 600s
\t\t\t\tread_timeout 600s
\t\t\t\twrite_timeout 600s
\t\t\t}
\t\t}
\t}
}
"""


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_cert_caddyfile_exactly() -> None:
    assert tls.caddyfile("cert", HOST) == CERT_CADDYFILE


@pytest.mark.parametrize("mode", tls.MODES)
def test_every_mode_routes_limits_and_times_out_alike(mode: str) -> None:
    text = tls.caddyfile(mode, HOST, email="ops@example.com")
    got = lines(text)
    assert got[:2] == ["{", "admin localhost:2019"]  # the global options block comes first
    assert got.count("{") == 1 and text.count("{") == text.count("}")
    assert [x for x in got if "2019" in x or "admin" in x] == ["admin localhost:2019"]
    assert f"{HOST} {{" in got and "email ops@example.com" in got
    assert 'header Strict-Transport-Security "max-age=31536000"' in got
    assert "max_size 512MiB" in got
    api, rest = got.index("handle /api/* {"), got.index("handle {")
    assert got[api + 1] == "reverse_proxy backend:8000 {" and api < rest
    assert got[rest + 1] == "reverse_proxy frontend:3000 {"
    for timeout in ("dial_timeout 600s", "read_timeout 600s", "write_timeout 600s"):
        assert got.count(timeout) == 2
    assert got.count("transport http {") == 2


def test_the_tls_directive_per_mode() -> None:
    tls_lines = {m: [x for x in lines(tls.caddyfile(m, HOST)) if x.startswith("tls")]
                 for m in tls.MODES}
    assert tls_lines == {"cert": ["tls /etc/caddy/tls/cert.pem /etc/caddy/tls/key.pem"],
                         "internal": ["tls internal"], "acme": []}
    assert "skip_install_trust" in lines(tls.caddyfile("internal", "10.0.0.4"))
    mounted = tls.caddyfile("cert", HOST, cert_file="/t/c.pem", key_file="/t/k.pem")
    assert "tls /t/c.pem /t/k.pem" in lines(mounted)


def test_acme_options_only_when_given() -> None:
    plain = lines(tls.caddyfile("acme", HOST))
    assert not any(x.startswith(("email", "acme_ca")) for x in plain)
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    got = lines(tls.caddyfile("acme", HOST, email="ops@example.com", acme_ca=staging))
    assert got[:4] == ["{", "admin localhost:2019", "email ops@example.com",
                       f"acme_ca {staging}"]


def test_other_upstreams() -> None:
    got = lines(tls.caddyfile("internal", HOST, backend="b:1", frontend="f:2"))
    assert "reverse_proxy b:1 {" in got and "reverse_proxy f:2 {" in got


@pytest.mark.parametrize("mode", ["", "http", "CERT", "letsencrypt"])
def test_unknown_modes_are_a_bug(mode: str) -> None:
    with pytest.raises(ValueError, match="TLS mode"):
        tls.caddyfile(mode, HOST)


@pytest.mark.parametrize("kwargs", [{"host": "a.example.com {\n admin :2019"},
                                    {"host": ""}, {"email": "a b@example.com"},
                                    {"acme_ca": "https://x/}"}])
def test_values_that_would_break_out_of_their_token_are_refused(kwargs: dict[str, str]) -> None:
    args = {"host": HOST, **kwargs}
    host = args.pop("host")
    with pytest.raises(ValueError, match="one token"):
        tls.caddyfile("acme", host, email=args.get("email", ""), acme_ca=args.get("acme_ca", ""))


# -- the site: --tls and its options together -------------------------------------------------

def app_settings(**values: object) -> AppSettings:
    """AppSettings as the CLI makes them: every value given counts as given."""
    return AppSettings(head="10.0.0.4", **values,  # type: ignore[arg-type]
                       given=frozenset(values))


def site_refused(**values: object) -> str:
    with pytest.raises(UsageError) as e:
        tls.site(app_settings(**values), NOW)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_off_is_no_site() -> None:
    assert tls.site(app_settings()) is None


def test_internal_needs_no_name_and_defaults_to_localhost() -> None:
    site = tls.site(app_settings(tls="internal"), NOW)
    assert site is not None and site.host == "localhost" and site.url == "https://localhost/"


def test_the_port_of_the_url_is_the_https_port() -> None:
    site = tls.site(app_settings(tls="internal", frontend_host=HOST, https_port=8443), NOW)
    assert site is not None and site.address == f"{HOST}:8443" and site.http_port == 80
    same = tls.site(app_settings(tls="internal", frontend_host=f"{HOST}:8443", https_port=8443))
    assert same is not None and same.host == HOST


def test_cert_mode_reads_and_checks_the_pair(tmp_path: Path, ca: CA) -> None:
    cert, key = leaf(ca)
    c, k = write(tmp_path, pem(cert, ca.cert), key_pem(key))
    site = tls.site(app_settings(tls="cert", tls_cert=c, tls_key=k, frontend_host=HOST), NOW)
    assert site is not None and site.cert is not None and site.cert.names == (HOST,)
    # What was checked is what the proxy gets (no second read), and the key stays out of repr.
    assert site.pem == (c.read_bytes(), k.read_bytes())
    assert "PRIVATE" not in repr(site) and k.read_text().splitlines()[1] not in repr(site)


@pytest.mark.parametrize("values, says", [
    ({"tls_cert": Path("/x.pem")}, "--tls-cert is for --tls cert, and this run has --tls off"),
    ({"tls": "internal", "acme_email": "a@example.com"}, "--acme-email is for --tls acme"),
    ({"https_port": 8443}, "--https-port is for the HTTPS proxy, which is off"),
    ({"publish_frontend": ("127.0.0.1", 3000)}, "--publish-frontend is for the HTTPS proxy"),
    ({"tls": "cert", "frontend_host": HOST}, "--tls cert needs --tls-cert FILE and --tls-key"),
    ({"tls": "acme"}, "--tls acme needs --frontend-host"),
    ({"tls": "acme", "frontend_host": "10.0.0.5"}, "an IP address cannot get a public"),
    ({"tls": "acme", "frontend_host": "syntho.test"}, "under .test, which no public CA"),
    ({"tls": "acme", "frontend_host": HOST, "acme_ca_root": Path("/r.pem")},
     "--acme-ca-root is the root of --acme-ca's HTTPS"),
    ({"tls": "internal", "https_port": 8080, "http_port": 8080}, "both 8080"),
    ({"tls": "internal", "frontend_host": f"{HOST}:9443"},
     f"give --frontend-host {HOST} --https-port 9443"),
])
def test_inconsistent_options_are_refused(values: dict[str, object], says: str) -> None:
    assert says in site_refused(**values)


def test_a_private_acme_ca_may_certify_private_names() -> None:
    site = tls.site(app_settings(tls="acme", frontend_host="syntho.test",
                                 acme_ca="https://pebble:14000/dir"), NOW)
    assert site is not None and site.mode == "acme"


def test_describe_warns_within_14_days(ca: CA) -> None:
    cert, _ = leaf(ca, end=NOW + timedelta(days=10))
    text = tls.describe(tls.info_of(cert), NOW)
    assert text.startswith(f"certificate for {HOST}, issued by ") and "Test CA" in text
    assert "WARNING: it expires in 9 day(s)" in text or "WARNING: it expires in 10 day(s)" in text
    fine, _ = leaf(ca)
    assert "WARNING" not in tls.describe(tls.info_of(fine), NOW)
