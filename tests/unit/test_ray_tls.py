"""Ray's TLS material (agent/ray_tls.py): the CA the token carries, a node's certificate made,
kept and renewed, and the handshake that tells which the head speaks."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from agent import ray_tls, resolve_tls, store
from agent.config import WorkerSettings
from agent.errors import UsageError
from tests.support import certs as test_certs

TOKEN = "ab" * 32
OTHER = "cd" * 32
NAMES = ray_tls.Names(("localhost", "vm-head"), ("127.0.0.1", "10.0.0.4"))


def certs(data_dir: Path) -> list[str]:
    return sorted(p.name for p in ray_tls.folder(data_dir).glob("node-*.crt"))


def test_every_holder_of_the_token_derives_the_same_ca_and_no_one_else_does(
        tmp_path: Path) -> None:
    first = ray_tls.derived_ca(TOKEN)
    ray_tls.derived_ca.cache_clear()
    again = ray_tls.derived_ca(TOKEN)
    assert again.fingerprint == first.fingerprint and again.cert.subject == first.cert.subject
    assert again.cert.not_valid_after_utc.year == 2050  # years away (rotation: a new token)
    assert ray_tls.derived_ca(OTHER).fingerprint != first.fingerprint
    # A certificate one node's copy of the CA signed verifies against another node's copy.
    made = ray_tls.node_material(tmp_path, TOKEN, NAMES)
    leaf = x509.load_pem_x509_certificate((made.folder / made.cert_file).read_bytes())
    assert ray_tls.signed_by(leaf, again)
    assert not ray_tls.signed_by(leaf, ray_tls.derived_ca(OTHER))


def test_a_nodes_certificate_is_made_once_then_kept(tmp_path: Path) -> None:
    made = ray_tls.node_material(tmp_path, TOKEN, NAMES)
    assert made.renewed == "first run"
    assert set(made.info.names) == {"localhost", "vm-head", "127.0.0.1", "10.0.0.4"}
    key = ray_tls.folder(tmp_path) / ray_tls.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kept = ray_tls.node_material(tmp_path, TOKEN, NAMES)
    assert (kept.renewed, kept.cert_file) == ("", made.cert_file)
    assert dict(kept.env())["RAY_TLS_SERVER_CERT"] == f"/ray-tls/{made.cert_file}"


@pytest.mark.parametrize("change, reason", [
    ("names", "this node is now also dialled at 10.0.0.9"),
    ("token", "the cluster's CA changed (a new token, or another CA of your own)"),
    ("near", "it expires in 24 day(s)"),
    ("expired", "it had expired"),
])
def test_a_re_run_renews_what_no_longer_serves(tmp_path: Path, change: str,
                                                reason: str) -> None:
    now = datetime.now(timezone.utc)
    # Issued long ago: 25 days left (renewed: 30 days ahead), or past its end.
    ago = {"near": 340, "expired": 400}.get(change, 0)
    made = ray_tls.node_material(tmp_path, TOKEN, NAMES, now=now - timedelta(days=ago))
    key = (ray_tls.folder(tmp_path) / ray_tls.KEY_FILE).read_text()
    later = now + timedelta(hours=1)
    names = ray_tls.Names(NAMES.dns, (*NAMES.ips, "10.0.0.9")) if change == "names" else NAMES
    # What `--watch` asks at each resync: the dates alone.
    assert ray_tls.renewal_due(tmp_path, later) == (change in ("near", "expired"))
    renewed = ray_tls.node_material(tmp_path, OTHER if change == "token" else TOKEN, names,
                                    now=later)
    assert renewed.renewed == reason and renewed.cert_file != made.cert_file
    assert renewed.info.not_after > later + timedelta(days=300)
    # The node's key is kept; the previous certificate stays for a container that restarts
    # before the run that replaced it ends, and no older one.
    assert (ray_tls.folder(tmp_path) / ray_tls.KEY_FILE).read_text() == key
    assert certs(tmp_path) == sorted([made.cert_file, renewed.cert_file])
    third = ray_tls.node_material(tmp_path, TOKEN, names, now=later + timedelta(days=400))
    assert certs(tmp_path) == sorted([renewed.cert_file, third.cert_file])


def test_a_short_validity_is_not_renewed_at_once(tmp_path: Path) -> None:
    """A third of the validity, when that is less than 30 days: `--ray-tls-days 7` does not
    restart the node's Ray at every run."""
    now = datetime.now(timezone.utc)
    made = ray_tls.node_material(tmp_path, TOKEN, NAMES, days=7, now=now)
    assert ray_tls.node_material(tmp_path, TOKEN, NAMES, days=7,
                                 now=now + timedelta(days=4)).cert_file == made.cert_file
    assert ray_tls.node_material(tmp_path, TOKEN, NAMES, days=7,
                                 now=now + timedelta(days=5)).renewed == "it expires in 1 day(s)"


def test_a_plan_makes_no_file(tmp_path: Path) -> None:
    with store.dry_run() as held:
        ray_tls.node_material(tmp_path, TOKEN, NAMES)
    assert not ray_tls.folder(tmp_path).exists()
    assert {p.name for p in held.files} >= {"ca.crt", "node.key"}


def test_a_damaged_key_is_refused_not_replaced(tmp_path: Path) -> None:
    ray_tls.node_material(tmp_path, TOKEN, NAMES)
    key = ray_tls.folder(tmp_path) / ray_tls.KEY_FILE
    key.write_text("not a key\n")
    with pytest.raises(Exception, match="not this node's Ray TLS key"):
        ray_tls.node_material(tmp_path, TOKEN, NAMES)
    assert key.read_text() == "not a key\n"


@contextmanager
def server(make: str, tmp_path: Path) -> Iterator[int]:
    """A listener on 127.0.0.1 that speaks as a head would: TLS with a node certificate of
    the token's CA, of another CA, or one that names another address; or plain (it reads
    what comes and closes, as a gRPC server without TLS does with a ClientHello)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    context = None
    if make != "plain":
        token = OTHER if make == "other-ca" else TOKEN
        names = (ray_tls.Names((), ("10.0.0.4",)) if make == "other-name" else NAMES)
        material = ray_tls.node_material(tmp_path / make, token, names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(material.folder / material.cert_file,
                                material.folder / ray_tls.KEY_FILE)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            if context is None:
                conn.recv(4096)
                conn.sendall(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00")  # an HTTP/2 GOAWAY
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("make, expected", [
    ("tls", ray_tls.HEAD_TLS),
    ("plain", ray_tls.HEAD_PLAIN),
    ("other-ca", "a certificate that this cluster's CA did not sign"),
    ("other-name", "does not name 127.0.0.1"),
])
def test_a_joining_node_learns_what_the_head_speaks_and_refuses_a_stranger(
        tmp_path: Path, make: str, expected: str) -> None:
    ca = ray_tls.derived_ca(TOKEN).pem
    with server(make, tmp_path) as port:
        if expected in (ray_tls.HEAD_TLS, ray_tls.HEAD_PLAIN):
            assert ray_tls.head_speaks("127.0.0.1", port, ca) == expected
        else:
            with pytest.raises(UsageError, match=expected):
                ray_tls.head_speaks("127.0.0.1", port, ca)


# --- a PKI of the operator's own ---------------------------------------------------------------

def own_ca(tmp_path: Path, name: str = "own", ca: bool = True,
           until: datetime | None = None) -> tuple[Path, Path]:
    return test_certs.ca_files(tmp_path, f"{name} CA", ca, until)


def test_a_ca_of_ones_own_issues_the_nodes_certificates(tmp_path: Path) -> None:
    ca = ray_tls.operator_ca(*own_ca(tmp_path))
    made = ray_tls.node_material(tmp_path / "node", ca, NAMES)
    assert made.renewed == "first run" and "CN=own CA" in made.info.issuer
    assert ray_tls.node_material(tmp_path / "node", ca, NAMES).renewed == ""
    other = ray_tls.operator_ca(*own_ca(tmp_path, "other"))
    assert ray_tls.node_material(tmp_path / "node", other, NAMES).renewed.startswith(
        "the cluster's CA changed")


@pytest.mark.parametrize("spoil, says", [
    ("leaf", "is not a CA certificate"),
    ("mode", "is readable by others (mode 0644): run chmod 600"),
    ("key", "does not belong to the CA certificate"),
    ("expired", "expired on"),
    ("garbage", "is not a PEM certificate"),
])
def test_a_ca_of_ones_own_is_checked_before_anything_changes(tmp_path: Path, spoil: str,
                                                             says: str) -> None:
    cert, key = own_ca(tmp_path, ca=spoil != "leaf",
                       until=datetime.now(timezone.utc) - timedelta(hours=1)
                       if spoil == "expired" else None)
    if spoil == "mode":
        key.chmod(0o644)
    if spoil == "key":
        key = own_ca(tmp_path, "other")[1]
    if spoil == "garbage":
        cert.write_text("not a certificate\n")
    with pytest.raises(UsageError, match=re.escape(says)):
        ray_tls.operator_ca(cert, key)


def issued_elsewhere(tmp_path: Path, names: ray_tls.Names) -> tuple[Path, Path, Path]:
    """A node certificate an organisation's CA issued (through the agent's own issuing, in a
    folder of its own), its key and the CA: what --ray-tls-cert/-key/-ca take."""
    ca_cert, ca_key = own_ca(tmp_path, "org")
    made = ray_tls.node_material(tmp_path / "elsewhere", ray_tls.operator_ca(ca_cert, ca_key),
                                 names)
    key = made.folder / ray_tls.KEY_FILE
    return made.folder / made.cert_file, key, ca_cert


def test_a_certificate_issued_elsewhere_is_checked_and_taken(tmp_path: Path) -> None:
    cert, key, ca = issued_elsewhere(tmp_path, NAMES)
    taken = ray_tls.provided_material(tmp_path / "node", cert, key, ca, NAMES)
    assert taken.renewed and taken.ca_pem == ca.read_text()
    assert (taken.folder / taken.cert_file).read_bytes() == cert.read_bytes()
    key_copy = taken.folder / ray_tls.KEY_FILE
    assert stat.S_IMODE(key_copy.stat().st_mode) == 0o600
    assert ray_tls.provided_material(tmp_path / "node", cert, key, ca, NAMES).renewed == ""

    more = ray_tls.Names(NAMES.dns, (*NAMES.ips, "10.0.0.9"))
    with pytest.raises(UsageError, match="does not name 10.0.0.9, where Ray dials this node"):
        ray_tls.provided_material(tmp_path / "node", cert, key, ca, more)
    stranger = own_ca(tmp_path, "stranger")[0]
    with pytest.raises(UsageError, match="was not issued by the CA in"):
        ray_tls.provided_material(tmp_path / "node", cert, key, stranger, NAMES)
    with pytest.raises(UsageError, match="does not belong to the certificate"):
        ray_tls.provided_material(tmp_path / "node", cert, own_ca(tmp_path, "k")[1], ca, NAMES)


@pytest.mark.parametrize("given, says", [
    ({"ray_tls_ca_cert": "c"}, "--ray-tls-ca-cert and --ray-tls-ca-key go together"),
    ({"ray_tls_cert": "c", "ray_tls_key": "k"}, "give all three"),
    ({"ray_tls_ca_cert": "c", "ray_tls_ca_key": "k", "ray_tls_cert": "c", "ray_tls_key": "k",
      "ray_tls_ca": "a"}, "not both"),
    ({"ray_tls_ca_cert": "c", "ray_tls_ca_key": "k", "ray_tls": False}, "--no-ray-tls with"),
])
def test_a_pki_of_ones_own_is_given_whole(given: dict[str, object], says: str) -> None:
    values = {k: Path(v) if isinstance(v, str) else v for k, v in given.items()}
    with pytest.raises(UsageError, match=says):
        resolve_tls.own_pki(WorkerSettings(**values))  # type: ignore[arg-type]


def test_a_non_root_image_reads_a_key_of_its_own(tmp_path: Path) -> None:
    """Ray's own images run as `ray`: root's 0600 key is not theirs to read; such a user gets
    a copy, 0600 and its own, which its containers are pointed at."""
    made = ray_tls.node_material(tmp_path, TOKEN, NAMES)
    assert ray_tls.readable_by(made, 0, 0) == made
    theirs = ray_tls.readable_by(made, 1000, 100)
    copy = made.folder / "node-1000.key"
    assert theirs.key_file == "node-1000.key"
    assert dict(theirs.env())["RAY_TLS_SERVER_KEY"] == "/ray-tls/node-1000.key"
    st = copy.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 100, 0o600)
    assert copy.read_text() == (made.folder / ray_tls.KEY_FILE).read_text()


@pytest.mark.parametrize("user, ids", [("", (0, 0)), ("root", (0, 0)), ("1000", (1000, 0)),
                                       ("1000:100", (1000, 100))])
def test_an_images_user_is_read_from_its_config_when_it_is_a_number(
        tmp_path: Path, user: str, ids: tuple[int, int]) -> None:
    class Engine:
        def image_user(self, ref: str) -> str:
            return user

    assert resolve_tls.image_user_ids(Engine(), "img", tmp_path, "") == ids  # type: ignore[arg-type]
