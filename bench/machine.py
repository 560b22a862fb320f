"""The machine's own limits, measured next to the registries' figures.

A registry cannot hash faster than this Python's sha256, store faster than
the disk takes bytes and fsyncs them, or move bytes over loopback faster than
the kernel does; these three numbers say how close each row is to the floor.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import platform
import socket
import time
from pathlib import Path

MIB = 1024 * 1024
BLOCK = 8 * MIB
SOCKET_BLOCK = 1 * MIB


def describe() -> dict:
    return {
        "cpus": os.cpu_count(),
        "memory_mib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MIB,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure(folder: Path, size: int, tcp_size: int) -> dict:
    """Return the three limits in MB/s (10^6 bytes a second)."""
    return {
        "sha256_mb_s": sha256_speed(size),
        "disk_write_fsync_mb_s": disk_speed(folder, size),
        "loopback_tcp_mb_s": loopback_speed(tcp_size),
    }


def sha256_speed(size: int) -> float:
    """hashlib.sha256 over `size` bytes already in memory."""
    data = os.urandom(BLOCK)
    view = memoryview(data)
    hasher = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(size // BLOCK):
        hasher.update(view)
    return size / (time.perf_counter() - started) / 1e6


def disk_speed(folder: Path, size: int) -> float:
    """Write `size` bytes to a new file in `folder`, then fsync it: the time
    until the bytes are on disk, as a registry's durable commit needs."""
    path = folder / "disk-speed.tmp"
    data = os.urandom(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(size // BLOCK):
            os.write(fd, data)
        os.fsync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return size / elapsed / 1e6


def loopback_speed(size: int) -> float:
    """Send `size` bytes over one TCP connection on 127.0.0.1 from this
    process to a receiving child process; time until the receiver has all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    # The forked receiver inherits the listening socket and accepts on it.
    receiver = multiprocessing.get_context("fork").Process(
        target=_receive, args=(listener, size)
    )
    receiver.start()
    listener.close()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            block = memoryview(os.urandom(SOCKET_BLOCK))
            started = time.perf_counter()
            sent = 0
            while sent < size:
                sock.sendall(block)
                sent += len(block)
            # The receiver answers one byte once it has every byte.
            if sock.recv(1) != b"k":
                raise RuntimeError("loopback receiver did not confirm")
            elapsed = time.perf_counter() - started
    finally:
        receiver.join(60)
        if receiver.is_alive():
            receiver.terminate()
    return size / elapsed / 1e6


def _receive(listener: socket.socket, size: int) -> None:
    listener.settimeout(60)
    conn, _ = listener.accept()
    listener.close()
    buffer = bytearray(SOCKET_BLOCK)
    with conn:
        conn.settimeout(60)
        received = 0
        while received < size:
            n = conn.recv_into(buffer)
            if not n:
                return
            received += n
        conn.sendall(b"k")
