"""What crosses a Docker network, as a reviewer with a packet sniffer would see it: `capture`
records every frame on the network's Linux bridge (tcpdump on this host), `found` counts where a
given byte string shows in that recording.

The bridge sees the traffic between its containers: tcpdump puts the interface in promiscuous
mode, and a bridge in promiscuous mode passes up every frame it forwards from one port (a
container's veth) to another (checked with two containers on a probe network), so one capture
on `br-<id>` holds the whole network's traffic, the VMs' among themselves included.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.waits import poll
from tests.support.engine import connect

LISTENING_TIMEOUT = 30.0  # seconds for tcpdump to open the interface
FLUSH_TIMEOUT = 10.0  # seconds for the closing marker to reach the file
STOP_TIMEOUT = 30.0  # seconds for it to write what it holds and exit after SIGINT
BUFFER_KIB = 32768  # the kernel ring (tcpdump -B): bursts of 64 KB frames (GRO) fit in it


def bridge(network_name: str) -> tuple[str, str | None]:
    """The host's interface of a Docker bridge network (its com.docker.network.bridge.name
    option when it was given one, else `br-` and the first 12 characters of its id), and its
    first IPv4 subnet's broadcast address (None when it has none)."""
    network = connect(timeout=30).networks.get(network_name)
    named = (network.attrs.get("Options") or {}).get("com.docker.network.bridge.name")
    broadcast = None
    for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
        subnet = ipaddress.ip_network(pool.get("Subnet") or "::/128", strict=False)
        if subnet.version == 4:
            broadcast = str(subnet.broadcast_address)
            break
    return (str(named) if named else f"br-{str(network.id)[:12]}"), broadcast


@dataclass
class Capture:
    path: Path
    interface: str
    stderr: list[str] = field(default_factory=list)  # tcpdump's, whole once it has stopped
    flushed: bool = False  # the closing marker was in the file before tcpdump was stopped

    @property
    def dropped(self) -> int | None:
        """The packets the kernel dropped (tcpdump's closing count); None before it stopped.
        A capture that dropped any proves nothing by what it does not hold."""
        for line in self.stderr:
            m = re.match(r"(\d+) packets? dropped by kernel", line)
            if m:
                return int(m.group(1))
        return None


@contextmanager
def capture(network_name: str, path: Path) -> Iterator[Capture]:
    """tcpdump on the network's bridge writes every whole frame (-s 0) to `path`, each as soon
    as it is read (-U, --immediate-mode), through a large kernel ring (-B); it is listening
    when this yields, and stopped after, pass or fail.

    Stopping: SIGINT alone would lose the frames still in the kernel's ring (tcpdump counts
    them "received by filter" but never writes them). So first a marker, a UDP broadcast from
    this host onto the network (it leaves through the bridge: the capture sees it), is waited
    for in the file: the ring is in order, so everything before it is written too (`flushed`;
    a bridge with no container on it is down and sends nothing: then it stays False). Then
    SIGINT (tcpdump writes what it holds, prints its counts and exits) and a wait.
    """
    interface, broadcast = bridge(network_name)
    result = Capture(path, interface)
    proc = subprocess.Popen(["tcpdump", "-i", interface, "-n", "-s", "0", "-U",
                             "--immediate-mode", "-B", str(BUFFER_KIB), "-w", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    listening = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            result.stderr.append(line.rstrip("\n"))
            if line.startswith("tcpdump: listening on"):
                listening.set()
        listening.set()  # it ended (or closed stderr): whoever waits looks at why

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not listening.wait(LISTENING_TIMEOUT) or proc.poll() is not None:
            raise RuntimeError(f"tcpdump on {interface} did not start listening: "
                               + " | ".join(result.stderr))
        yield result
    finally:
        if proc.poll() is None and broadcast is not None:
            result.flushed = _mark(path, broadcast)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(STOP_TIMEOUT)


def _mark(path: Path, broadcast: str) -> bool:
    """A marker broadcast onto the network; whether it reached the capture file in time."""
    marker = f"syntho-capture-end-{uuid.uuid4().hex}".encode()
    offset = path.stat().st_size if path.exists() else 0

    def arrived() -> bool:
        with path.open("rb") as f:
            f.seek(offset)
            return marker in f.read()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(marker, (broadcast, 9))  # discard
    return poll(arrived, FLUSH_TIMEOUT, "the capture's closing marker", first=0.01)


# --- reading the pcap file ------------------------------------------------------------------

_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",  # microsecond timestamps
          b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}  # nanosecond timestamps
_ETHERNET, _LINUX_SLL, _RAW, _LINUX_SLL2 = 1, 113, 101, 276


def frames(path: Path) -> Iterator[tuple[int, bytes]]:
    """(link type, captured bytes) of every packet of a classic pcap file, in capture order;
    a record cut short at the end (a capture stopped mid-write) is left out."""
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in _MAGIC:
        raise ValueError(f"{path}: not a pcap file")
    order = _MAGIC[data[:4]]
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    offset = 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack(order + "I", data[offset + 8:offset + 12])[0]
        offset += 16
        if offset + incl_len > len(data):
            return
        yield linktype, data[offset:offset + incl_len]
        offset += incl_len


def _ip_packet(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet in a frame (Ethernet, VLAN-tagged or not; Linux cooked; raw IP)."""
    if linktype == _ETHERNET and len(frame) >= 14:
        ethertype, offset = struct.unpack("!H", frame[12:14])[0], 14
        while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # VLAN tags
            ethertype = struct.unpack("!H", frame[offset + 2:offset + 4])[0]
            offset += 4
    elif linktype == _LINUX_SLL and len(frame) >= 16:
        ethertype, offset = struct.unpack("!H", frame[14:16])[0], 16
    elif linktype == _LINUX_SLL2 and len(frame) >= 20:
        ethertype, offset = struct.unpack("!H", frame[0:2])[0], 20
    elif linktype == _RAW:
        return frame
    else:
        return None
    return frame[offset:] if ethertype in (0x0800, 0x86DD) else None


# a TCP segment: (source, source port, destination, destination port), sequence number, payload
_Segment = tuple[tuple[bytes, int, bytes, int], int, bytes]


def _tcp_segment(ip: bytes) -> _Segment | None:
    """The TCP segment in an IP packet: IPv4 (not a fragment) or IPv6 with TCP as its first
    next header (no extension headers); None for anything else."""
    if len(ip) >= 20 and ip[0] >> 4 == 4:
        header = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        fragment = struct.unpack("!H", ip[6:8])[0] & 0x3FFF  # MF flag and offset
        if ip[9] != 6 or fragment:
            return None
        src, dst, tcp = ip[12:16], ip[16:20], ip[header:total or len(ip)]
    elif len(ip) >= 40 and ip[0] >> 4 == 6:
        if ip[6] != 6:
            return None
        length = struct.unpack("!H", ip[4:6])[0]
        src, dst, tcp = ip[8:24], ip[24:40], ip[40:40 + length]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    return (src, sport, dst, dport), seq, tcp[(tcp[12] >> 4) * 4:]


def found(path: Path, needle: bytes) -> int:
    """How often `needle` shows in a capture: the packets that hold it anywhere in their bytes
    (headers, any protocol), plus the times it is split across two TCP segments that follow
    each other in one flow and direction (the second's sequence number is where the first's
    payload ends, wherever either sits in the capture; a retransmitted copy counted once).

    Not found: a needle spread over three segments or more (longer than a segment), split
    across IP fragments, or inside a compressed or encrypted stream; TCP under IPv6 extension
    headers is not looked at for splits.
    """
    if not needle:
        raise ValueError("an empty needle is everywhere")
    count = 0
    segments: dict[tuple[tuple[bytes, int, bytes, int], int], bytes] = {}  # (flow, seq): payload
    for linktype, frame in frames(path):
        if needle in frame:
            count += 1
        ip = _ip_packet(linktype, frame)
        segment = _tcp_segment(ip) if ip is not None else None
        if segment is not None and segment[2]:
            flow, seq, payload = segment
            segments.setdefault((flow, seq), payload)
    if len(needle) == 1:
        return count  # one byte cannot be split
    ends = {(flow, (seq + len(payload)) & 0xFFFFFFFF): payload
            for (flow, seq), payload in segments.items()}
    keep = len(needle) - 1
    for (flow, seq), payload in segments.items():
        before = ends.get((flow, seq))
        if before is None:
            continue
        # Shorter than the needle on either side of the seam: each occurrence spans it.
        joint = before[-keep:] + payload[:keep]
        i = joint.find(needle)
        while i != -1:
            count += 1
            i = joint.find(needle, i + 1)
    return count


def flows_holding(path: Path, needle: bytes) -> list[str]:
    """The TCP flows (source port -> destination port) whose packets hold needle whole: what a
    failed assertion names, to say which of Ray's ports carried it."""
    seen: dict[str, None] = {}
    for linktype, frame in frames(path):
        if needle not in frame:
            continue
        ip = _ip_packet(linktype, frame)
        segment = _tcp_segment(ip) if ip is not None else None
        if segment is not None:
            (_, sport, _, dport), _, _ = segment
            seen.setdefault(f"{sport}->{dport}")
    return list(seen)
