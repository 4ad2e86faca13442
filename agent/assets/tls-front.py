"""TLS in front of the Ray dashboard (written by syntho-agent, run by the Ray image's python3).

Ray's dashboard speaks plain HTTP only and has no TLS setting; its maintainers point to a proxy
in front of it (ray-project/ray#15548). This is that proxy, as small as it can be: the dashboard
listens on 127.0.0.1:8265, this program on the host's other addresses, same port, in TLS
(server-only, 1.2 or later: clients authenticate with the token inside HTTP), and it relays the
bytes both ways unchanged, so keep-alive, chunked bodies, websockets and long polls pass as they
are. One thread per connection, which does the handshake (within HANDSHAKE_SECONDS: a slow
client holds up no other) and then the relay, over memory buffers: OpenSSL allows no two
threads on one connection (openssl/openssl#20446).

Standard library only, Python 3.9 or later. Environment: FRONT_CERT and FRONT_KEY (PEM paths),
FRONT_CA (optional, unused), FRONT_LISTEN (comma-separated IPv4 addresses, or * for every
address of the host's interfaces but loopback and the engine's bridges), FRONT_PORT, BACKEND
(host:port); a missing or bad one is one line and exit 2. FRONT_PIDFILE (optional; where Ray's
launcher starts the front in the background of a container): a front named there is stopped
first, and this one's process id written. `--check` (the container's health check): a TLS
handshake with the first FRONT_LISTEN address, unverified; exit 0 if it completes, 1 otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import select
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
from typing import NoReturn

HANDSHAKE_SECONDS = 10.0
CHUNK = 65536
HIGH_WATER = 1 << 20  # a side is not read while this much waits to be written to the other


class Bad(Exception):
    """A missing or bad setting; its message is the one line printed."""


def log(line: str) -> None:
    sys.stderr.write(f"tls-front: {line}\n")
    sys.stderr.flush()


def setting(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise Bad(f"{name} is not set")
    return value


def port_of(name: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise Bad(f"{name}: {text!r} is not a TCP port")
    return int(text)


ENGINE_IFACES = ("docker", "br-", "veth")  # the engine's bridges: no other VM dials them


def host_addresses() -> list[str]:
    """The IPv4 address of each of the host's interfaces that has one (SIOCGIFADDR; Linux),
    loopback and the engine's bridges left out."""
    import fcntl
    import struct

    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            if name == "lo" or name.startswith(ENGINE_IFACES):
                continue
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on it
                continue
            address = socket.inet_ntoa(packed[20:24])
            if address not in found and not address.startswith("127."):
                found.append(address)
    if not found:
        raise Bad("FRONT_LISTEN: * but the host has no address besides loopback")
    return found


def listen_settings() -> tuple[list[str], int]:
    listen = setting("FRONT_LISTEN")
    addresses = (host_addresses() if listen == "*"
                 else [a.strip() for a in listen.split(",")])
    for a in addresses:
        try:
            ipaddress.IPv4Address(a)
        except ValueError:
            raise Bad(f"FRONT_LISTEN: {a!r} is not an IPv4 address") from None
    return addresses, port_of("FRONT_PORT", setting("FRONT_PORT"))


def backend_setting() -> tuple[str, int]:
    host, _, port = setting("BACKEND").rpartition(":")
    if not host:
        raise Bad(f"BACKEND: {os.environ['BACKEND']!r} is not host:port")
    return host, port_of("BACKEND", port)


def encrypted_key() -> NoReturn:  # OpenSSL would otherwise ask for a passphrase on the tty
    raise ValueError("FRONT_KEY is encrypted; the front needs it without a passphrase")


def server_context() -> ssl.SSLContext:
    cert, key, ca = setting("FRONT_CERT"), setting("FRONT_KEY"), os.environ.get("FRONT_CA")
    for name, path in (("FRONT_CERT", cert), ("FRONT_KEY", key), ("FRONT_CA", ca)):
        if path and not os.path.isfile(path):
            raise Bad(f"{name}: no file {path}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key, password=encrypted_key)
    except (OSError, ValueError) as exc:
        raise Bad(f"cannot load FRONT_CERT and FRONT_KEY: {exc}") from None
    return ctx


def handshake(ctx: ssl.SSLContext, sock: socket.socket
              ) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        finally:  # what OpenSSL has to say (an alert too) goes out before anything else
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(outgoing.read())
        data = sock.recv(CHUNK)
        if not data:
            raise ConnectionError("closed by the client")
        incoming.write(data)
    return tls, incoming, outgoing


def relay(client: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
          outgoing: ssl.MemoryBIO, backend: socket.socket) -> None:
    """Bytes both ways until both sides have finished; a side's end is passed on to the other
    (close_notify and FIN to the client, FIN to the backend) once what it sent was delivered."""
    to_client, to_backend = bytearray(), bytearray()
    client_eof = backend_eof = client_shut = backend_shut = False
    client.setblocking(False)
    backend.setblocking(False)
    while True:
        while not client_eof:  # what came with the handshake's last flight counts too
            try:
                plain = tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:  # a FIN without close_notify is an error: no writing after
                if not incoming.eof:
                    raise
                plain = b""
            client_eof = not plain
            to_backend += plain
        to_client += outgoing.read()  # TLS 1.3's replies to the client's key updates, say
        if client_eof and not to_backend and not backend_shut:
            backend.shutdown(socket.SHUT_WR)
            backend_shut = True
        if backend_eof and not to_client and not client_shut:
            client.shutdown(socket.SHUT_WR)
            client_shut = True
        readers = [s for s, done, waiting in ((client, client_eof, to_backend),
                                              (backend, backend_eof, to_client))
                   if not done and len(waiting) < HIGH_WATER]
        writers = [s for s, waiting in ((client, to_client), (backend, to_backend)) if waiting]
        if not readers and not writers:
            return
        poller = select.poll()  # not select.select: it fails past file descriptor 1023
        for sock in {*readers, *writers}:
            poller.register(sock, (select.POLLIN if sock in readers else 0)
                            | (select.POLLOUT if sock in writers else 0))
        ready = dict(poller.poll())
        readable = [s for s in readers if ready.get(s.fileno(), 0) & ~select.POLLOUT]
        writable = [s for s in writers if ready.get(s.fileno(), 0) & ~select.POLLIN]
        if client in readable:
            data = client.recv(CHUNK)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
        if backend in readable:
            data = backend.recv(CHUNK)
            if data:
                tls.write(data)
            else:
                backend_eof = True
                try:
                    tls.unwrap()  # queues the close_notify
                except ssl.SSLWantReadError:
                    pass  # the client's own comes later (or never: that is fine too)
        to_client += outgoing.read()
        for sock, waiting in ((client, to_client), (backend, to_backend)):
            if sock in writable:
                try:
                    del waiting[:sock.send(waiting)]
                except BlockingIOError:
                    pass


def serve(ctx: ssl.SSLContext, client: socket.socket, peer: tuple[str, int],
          target: tuple[str, int]) -> None:
    who = f"{peer[0]}:{peer[1]}"
    try:
        with client:
            try:
                tls, incoming, outgoing = handshake(ctx, client)
            except OSError as exc:  # ssl.SSLError and timeouts are OSErrors too
                log(f"handshake with {who} failed: {str(exc) or type(exc).__name__}")
                return
            try:
                backend = socket.create_connection(target, timeout=HANDSHAKE_SECONDS)
            except OSError as exc:
                log(f"{who}: the backend {target[0]}:{target[1]} did not answer: {exc}")
                return
            with backend:
                relay(client, tls, incoming, outgoing, backend)
    except OSError:
        pass  # a reset on either side ends the connection: both are closed


def check() -> int:
    """The health check: a handshake with the first address completes (unverified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        addresses, port = listen_settings()
        with socket.create_connection((addresses[0], port), timeout=5) as raw, \
                ctx.wrap_socket(raw):
            return 0
    except (Bad, OSError) as exc:
        log(f"check failed: {exc}")
        return 1  # never 2: Docker reserves it in health checks


def running(pid: int) -> bool:
    """Whether the process lives (a zombie, which its parent has not reaped, holds no port)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def take_over(pidfile: str) -> None:
    """Stop the front whose process id pidfile holds (when that process is still a front: a
    process id is reused after a restart), wait until it is gone, and write this one's."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            ours = pid != os.getpid() and b"front" in f.read()
    except (OSError, ValueError):
        ours = False
    if ours:
        log(f"stopping the front before this one (process {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polls the process table: nothing to wait on for a non-child
    tmp = f"{pidfile}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, pidfile)


def stop(signum: int, frame: object) -> NoReturn:
    log(f"stopping ({signal.Signals(signum).name})")
    sys.exit(0)


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        sys.exit(check())
    try:
        if sys.argv[1:]:
            raise Bad(f"unknown arguments {sys.argv[1:]} (only --check is known)")
        addresses, port = listen_settings()
        target = backend_setting()
        ctx = server_context()
        if os.environ.get("FRONT_PIDFILE"):
            take_over(os.environ["FRONT_PIDFILE"])
        chooser = selectors.DefaultSelector()
        for address in addresses:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((address, port))
            except OSError as exc:
                raise Bad(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None
            listener.listen(128)
            listener.setblocking(False)
            chooser.register(listener, selectors.EVENT_READ, listener)
    except Bad as exc:
        log(str(exc))
        sys.exit(2)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"TLS on {', '.join(f'{a}:{port}' for a in addresses)}, "
        f"relayed to {target[0]}:{target[1]}")
    while True:
        for key, _ in chooser.select():
            try:
                client, peer = key.data.accept()
            except BlockingIOError:
                continue
            except OSError as exc:  # out of file descriptors, say: the next try may do
                log(f"accept failed: {exc}")
                time.sleep(0.1)
                continue
            threading.Thread(target=serve, args=(ctx, client, peer, target), daemon=True).start()


if __name__ == "__main__":
    main()
