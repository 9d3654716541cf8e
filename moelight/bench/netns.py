"""An emulated interconnect on one machine: a private network namespace with a shaped loopback.

`run_in_namespace(argv)` re-executes a command under `unshare -n` (a new network namespace whose
only device is its own loopback); inside, `setup_loopback()` brings `lo` up and puts an HTB
qdisc on it with two classes: traffic to or from `SHAPED_ADDR` (127.0.0.2, where the benchmark
binds its expert-parallel gloo group) goes through the shaped class, everything else (rendezvous,
DDP's dense-gradient all-reduce, the benchmark's own bookkeeping) through an unshaped one.
`shape(rate, burst)` sets the shaped class; `unshape()` lifts it.

Safety: nothing is shaped unless this process runs in a namespace that `run_in_namespace`
created (its network-namespace id differs from the parent's, recorded in the environment), and
only `lo` is touched. HTB and its u32 filter are used because this kernel has no `sch_netem`:
the per-call latency is added in-process instead (`moelight.parallel.all_to_all.COMM.latency_s`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from moelight.errors import MoelightError

SHAPED_ADDR = "127.0.0.2"
ENV_PARENT_NS = "MOELIGHT_NETNS_PARENT"
TOOLS = ("unshare", "tc", "ip")
UNSHAPED_RATE = "100gbit"
MTU = 1500
MIN_BURST = 2000  # bytes: at least one packet with headers
SOCKET_BUFFERS = {"tcp_wmem": "4096 16384 32768", "tcp_rmem": "4096 32768 65536"}


def _netns_id() -> str:
    return os.readlink("/proc/self/ns/net")


def missing_requirements() -> str | None:
    """Why an emulated link cannot be set up here, or None when it can."""
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        return "needs Linux network namespaces (/proc/self/ns/net)"
    if os.geteuid() != 0:
        return "needs root (unshare -n and tc); run as root, or use --link none"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH (packages util-linux and iproute2)"
    return None


def require() -> None:
    reason = missing_requirements()
    if reason:
        raise MoelightError(f"the emulated interconnect {reason}")


def in_namespace() -> bool:
    """True only inside a namespace `run_in_namespace` created (not the machine's own)."""
    parent = os.environ.get(ENV_PARENT_NS)
    return parent is not None and parent != _netns_id()


def run_in_namespace(argv: list[str]) -> int:
    """Run `python -m moelight <argv>` in a new network namespace; returns its exit status."""
    return run_command_in_namespace([sys.executable, "-m", "moelight", *argv])


def run_command_in_namespace(cmd: list[str]) -> int:
    """Run `cmd` (e.g. a benchmark script re-executing itself) in a new network namespace."""
    require()
    env = dict(os.environ, **{ENV_PARENT_NS: _netns_id()})
    return subprocess.run(["unshare", "--net", "--", *cmd], env=env).returncode


def _tc(*args: str) -> None:
    if not in_namespace():  # never shape the machine's own devices
        raise MoelightError("refusing to run tc outside a network namespace created by moelight")
    proc = subprocess.run(["tc", *args], capture_output=True, text=True)
    if proc.returncode:
        raise MoelightError(f"tc {' '.join(args)} failed: {proc.stderr.strip()}")


def setup_loopback() -> None:
    """`lo` up; HTB root with an unshaped default class 1:10 and class 1:20 for SHAPED_ADDR."""
    if not in_namespace():
        raise MoelightError("refusing to configure lo outside a network namespace created by moelight")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Ethernet-sized packets (no 64 KB loopback super-packets) and, below, a burst of ~one
    # packet: the link then meters every call's bytes, small calls included (measured here:
    # a 2-rank all2all of 8-128 KB per peer within 0.3-1.7 ms of bytes / rate).
    subprocess.run(["ip", "link", "set", "lo", "mtu", str(MTU)], check=True)
    subprocess.run(["ip", "link", "set", "lo", "gso_max_size", str(MTU)], capture_output=True)
    # Small socket buffers (this namespace's own sysctls): a send then completes when its bytes
    # have crossed the shaped link, not when they sit in a 4 MB kernel buffer that drains during
    # the next compute phase (which made all2alls look twice as fast as the link allows).
    for name, value in SOCKET_BUFFERS.items():
        with open(f"/proc/sys/net/ipv4/{name}", "w") as f:
            f.write(value)
    # a repeated measurement in the same namespace sets it up again: start from no qdisc
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", "100000")
    _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", UNSHAPED_RATE)
    _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", UNSHAPED_RATE)
    for direction in ("dst", "src"):
        _tc(
            "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", direction, f"{SHAPED_ADDR}/32", "flowid", "1:20",
        )  # fmt: skip


def shape(rate_bytes_per_s: float, burst_bytes: int) -> None:
    """Every byte to or from SHAPED_ADDR, all ranks together, at `rate` (both directions share it)."""
    bits = max(8, int(rate_bytes_per_s * 8))
    rate = f"{bits}bit"
    burst = f"{max(MIN_BURST, int(burst_bytes))}b"
    _tc("class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
        "rate", rate, "ceil", rate, "burst", burst, "cburst", burst)  # fmt: skip


def unshape() -> None:
    _tc("class", "change", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", UNSHAPED_RATE)
