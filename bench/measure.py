"""Measurements of one load run: wrk's figures and the CPU the proxy used meanwhile.

Rules implemented:

* wrk runs with ``--latency``; requests/s, completed requests, the p50 and p99 lines,
  non-2xx/3xx responses and socket errors are parsed from its text output (latencies are
  converted to milliseconds whatever unit wrk chose).
* A process tree's CPU is utime+stime+cutime+cstime (fields 14-17 of /proc/<pid>/stat)
  summed over the root and all its descendants (found through their ppid), in seconds.
  It is read right before and right after the wrk run; CPU per request is the difference
  divided by the requests wrk completed.
* For context, the same is measured for the upstream's tree, wrk's own CPU (from
  RUSAGE_CHILDREN: wrk is the only child reaped meanwhile), and the rest of the machine
  (non-idle ticks of /proc/stat minus the three), each as cores used on average.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import time

from servers import BenchError, Proc

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def tree_cpu_ticks(root_pid: int) -> tuple[int, frozenset[int]]:
    """utime+stime+cutime+cstime summed over root_pid and all its descendants."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2:].split()
        # rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17
        table[int(entry)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pids, stack, ticks = set(), [root_pid], 0
    while stack:
        pid = stack.pop()
        if pid in table and pid not in pids:
            pids.add(pid)
            ticks += table[pid][1]
            stack.extend(children.get(pid, ()))
    return ticks, frozenset(pids)


def machine_busy_ticks() -> int:
    """Non-idle CPU ticks of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


# --------------------------------------------------------------------------- wrk

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PCT_RE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_REQS_RE = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> dict:
    """Requests/s, completed requests, p50/p99 in ms and error counts from wrk --latency."""
    pcts = {p: float(v) * _UNIT_MS[u] for p, v, u in _PCT_RE.findall(text)}
    reqs = _REQS_RE.search(text)
    rps = _RPS_RE.search(text)
    if reqs is None or rps is None or "50" not in pcts or "99" not in pcts:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    non2xx = _NON2XX_RE.search(text)
    sock = _SOCKERR_RE.search(text)
    return {
        "requests": int(reqs.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": pcts["50"],
        "p99_ms": pcts["99"],
        "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def wrk_argv(args, url: str, duration: float, headers: dict) -> list[str]:
    argv = [WRK, "--latency", "-t", str(args.threads), "-c", str(args.connections),
            "-d", f"{duration:g}s", "--timeout", f"{args.timeout:g}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    return argv + [url]


def run_wrk(argv: list[str], duration: float) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {shlex.join(argv)}\n{out.decode()}")
    return out.decode(errors="replace")


def measure(args, proc: Proc, upstream: Proc, url: str, duration: float, headers: dict) -> dict:
    """One wrk run against url, with the CPU used meanwhile by proc's process tree (and,
    for context, by the upstream's tree and by wrk itself)."""
    argv = wrk_argv(args, url, duration, headers)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = machine_busy_ticks()
    up_before, _ = tree_cpu_ticks(upstream.pid)
    before, pids_before = tree_cpu_ticks(proc.pid)
    t0 = time.monotonic()
    out = run_wrk(argv, duration)
    wall = time.monotonic() - t0
    after, pids_after = tree_cpu_ticks(proc.pid)
    up_after, _ = tree_cpu_ticks(upstream.pid)
    busy_after = machine_busy_ticks()
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not proc.alive():
        raise BenchError(f"{proc.label} died during the run\n{proc.log_tail()}")
    result = parse_wrk(out)
    cpu_s = (after - before) / CLK_TCK
    requests = result["requests"]
    upstream_cores = (up_after - up_before) / CLK_TCK / wall
    wrk_cores = (wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime
                 - wrk_before.ru_stime) / wall
    busy_cores = (busy_after - busy_before) / CLK_TCK / wall
    result.update(
        wall_s=wall,
        cpu_s=cpu_s,
        cpu_us_per_req=cpu_s / requests * 1e6 if requests else None,
        proxy_cores=cpu_s / wall,
        upstream_cores=upstream_cores,
        wrk_cores=wrk_cores,
        other_cores=max(0.0, busy_cores - cpu_s / wall - upstream_cores - wrk_cores),
        processes=len(pids_after),
        process_set_changed=pids_before != pids_after,
    )
    return result
