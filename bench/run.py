#!/usr/bin/env python3
"""Benchmark guichet against nginx as reverse proxies of the same upstream.

Rules implemented (bench/README.md explains them for readers):

* Everything listens on 127.0.0.1 only; every port is picked free at start.
* One upstream (an nginx returning a fixed 12-byte body) serves both proxies for the
  whole run. The proxies are an nginx configured as a reverse proxy with upstream
  keep-alive, and guichet with no plugins; both run with the same number of workers.
* For each worker count, both proxies are started side by side, each gets one warm-up
  run, then ``--rounds`` rounds of wrk runs with the same connections, threads and
  duration. Inside a round the proxies are interleaved: nginx, then guichet (then each
  further guichet scenario).
* The proxy's CPU is the sum of utime+stime (+cutime+cstime) of the proxy's process and
  all its descendants, read from /proc/<pid>/stat right before and right after each wrk
  run; CPU per request = that difference / requests wrk completed (measure.py).
* Each metric of a proxy is the median over rounds; ratios are guichet / nginx of those
  medians. Scenarios other than ``bare`` run on guichet only and are reported as a ratio
  to guichet's bare route.
* Every process started here lives in its own process group and is stopped (SIGTERM,
  then SIGKILL) when the script ends, whether normally, by an exception, Ctrl-C or SIGTERM
  (servers.py).
* nginx and wrk are installed from Debian's packages when missing (unless --no-install).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import measure
import servers
from measure import measure as measure_run, run_wrk, wrk_argv
from servers import (HOST, UPSTREAM_BODY, BenchError, Proc, check_proxies_body, free_ports,
                     proxy_nginx_conf, start_nginx, upstream_nginx_conf, wait_ready)

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"rps_ratio_min": 0.6, "cpu_ratio_max": 1.7}
# a scenario's req/s as a ratio to guichet's bare route (issue 3: the auth route)
SCENARIO_TARGETS = {"auth": 0.8}  # rate-limiting's ratios are reported without a target
DEFAULT_GUICHET_CMD = (
    "{python} -m guichet run --config {config} --listen 127.0.0.1:{port}"
    " --admin-listen 127.0.0.1:{admin_port} --workers {workers}"
)


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One route of guichet's configuration, loaded by its own wrk runs.

    ``route`` is merged into the route object (e.g. ``{"plugins": [...]}``), ``top_level``
    into the root of kong.yml (e.g. ``{"consumers": [...]}``), ``headers`` are sent by wrk
    with every request (e.g. an API key). Only scenarios with ``vs_nginx`` are also run on
    nginx; the others are compared to guichet's ``bare`` route.
    """

    name: str
    path: str
    route: dict = field(default_factory=dict)
    top_level: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    vs_nginx: bool = False
    needs: tuple = ()  # services it needs ("redis"); skipped with the reason when absent


# Extension point: append scenarios here (plugins, rate limiting...). The first one is the
# baseline that every other scenario is compared with.
BENCH_KEY = "bench-key-0123456789abcdef"
# the Redis of the ratelimit-redis scenario (host:port)
_REDIS_HOST, _, _REDIS_PORT = os.environ.get("GUICHET_BENCH_REDIS",
                                             "127.0.0.1:6379").rpartition(":")
BENCH_REDIS = (_REDIS_HOST or "127.0.0.1", int(_REDIS_PORT))
SCENARIOS: list[Scenario] = [
    Scenario(name="bare", path="/", vs_nginx=True),
    # issue 3's cost target: this route at >= 0.8x the bare route's requests/s
    Scenario(
        name="auth",
        path="/auth",
        route={"plugins": [
            {"name": "key-auth"},
            {"name": "correlation-id"},
            {"name": "ip-restriction", "config": {"allow": ["127.0.0.0/8", "::1/128"]}},
        ]},
        top_level={"consumers": [{"username": "bench",
                                  "keyauth_credentials": [{"key": BENCH_KEY}]}]},
        headers={"apikey": BENCH_KEY},
    ),
    # issue 4: the cost of rate-limiting, counters in the node table and in Redis (a limit
    # no run reaches: every request is counted and admitted)
    Scenario(
        name="ratelimit-local",
        path="/ratelimit-local",
        route={"plugins": [{"name": "rate-limiting",
                            "config": {"second": 100_000_000, "policy": "local"}}]},
    ),
    Scenario(
        name="ratelimit-redis",
        path="/ratelimit-redis",
        route={"plugins": [{"name": "rate-limiting", "config": {
            "second": 100_000_000, "policy": "redis",
            "redis": {"host": BENCH_REDIS[0], "port": BENCH_REDIS[1]}}}]},
        needs=("redis",),
    ),
]


def guichet_config(upstream_port: int, scenarios: list[Scenario]) -> dict:
    """The declarative configuration (Kong format 3.0) guichet is started with."""
    routes = []
    config: dict = {"_format_version": "3.0"}
    for sc in scenarios:
        routes.append({"name": sc.name, "paths": [sc.path], **sc.route})
        for key, value in sc.top_level.items():
            if isinstance(value, list):
                config.setdefault(key, []).extend(value)
            else:
                config[key] = value
    config["services"] = [
        {"name": "bench", "url": f"http://{HOST}:{upstream_port}", "routes": routes}
    ]
    return config


def drop_unavailable_scenarios(log) -> None:
    """Remove the scenarios whose services do not answer, saying why."""
    kept = []
    for sc in SCENARIOS:
        if "redis" in sc.needs:
            try:
                with socket.create_connection(BENCH_REDIS, timeout=1.0):
                    pass
            except OSError as exc:
                log(f"skipping scenario {sc.name}: Redis is not reachable at "
                    f"{BENCH_REDIS[0]}:{BENCH_REDIS[1]} ({exc}; set GUICHET_BENCH_REDIS=host:port)")
                continue
        kept.append(sc)
    SCENARIOS[:] = kept


def write_yaml(path: Path, data: dict) -> None:
    try:
        import yaml  # PyYAML is a dependency of guichet itself
    except ImportError:  # JSON is valid YAML: still a readable kong.yml
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------- orchestration


@dataclass
class Target:
    """One thing loaded by wrk: a proxy and one of its routes."""

    proxy: str         # "nginx" or "guichet" (or "nginx-b" in --self-test)
    scenario: Scenario
    proc: Proc
    port: int

    @property
    def key(self) -> str:
        return f"{self.proxy}/{self.scenario.name}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.scenario.path}"


def guichet_env() -> dict:
    env = dict(os.environ)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_guichet(args, tmp_root: Path, workers: int, port: int, admin_port: int,
                  upstream_port: int) -> Proc:
    tmp = Path(tempfile.mkdtemp(prefix="guichet-", dir=tmp_root))
    config = tmp / "kong.yml"
    write_yaml(config, guichet_config(upstream_port, SCENARIOS))
    argv = shlex.split(args.guichet_cmd.format(
        python=shlex.quote(sys.executable), config=shlex.quote(str(config)), port=port,
        admin_port=admin_port, workers=workers))
    proc = Proc("guichet", argv, tmp / "guichet.log", env=guichet_env(), cwd=REPO_ROOT)
    wait_ready(proc, f"http://{HOST}:{admin_port}/status", args.start_timeout)
    return proc


def run_config(args, tmp_root: Path, workers: int, upstream: Proc, upstream_port: int,
               ports: list[int], log) -> dict:
    """Start both proxies with `workers` workers, warm up, run the rounds, stop them."""
    procs: list[Proc] = []
    try:
        nginx_port, second_port, admin_port = ports
        nginx = start_nginx("nginx", tmp_root, lambda d: proxy_nginx_conf(
            d, nginx_port, upstream_port, workers))
        procs.append(nginx)
        wait_ready(nginx, f"http://{HOST}:{nginx_port}/", args.start_timeout)
        if args.self_test:
            second = start_nginx("nginx-b", tmp_root, lambda d: proxy_nginx_conf(
                d, second_port, upstream_port, workers))
            procs.append(second)
            wait_ready(second, f"http://{HOST}:{second_port}/", args.start_timeout)
            second_label = "nginx-b"
        else:
            second = start_guichet(args, tmp_root, workers, second_port, admin_port,
                                   upstream_port)
            procs.append(second)
            second_label = "guichet"
        # interleaved in every round: nginx, guichet's bare route, guichet's other scenarios
        order = [Target("nginx", sc, nginx, nginx_port) for sc in SCENARIOS if sc.vs_nginx]
        order += [Target(second_label, sc, second, second_port) for sc in SCENARIOS]
        for t in order:
            check_proxies_body(t.key, t.url, t.scenario.headers)
        for t in order:
            log(f"[workers={workers}] warm-up {t.key} {args.warmup:g}s")
            run_wrk(wrk_argv(args, t.url, args.warmup, t.scenario.headers), args.warmup)
        runs = []
        for rnd in range(1, args.rounds + 1):
            for t in order:
                res = measure_run(args, t.proc, upstream, t.url, args.duration,
                                  t.scenario.headers)
                res.update(round=rnd, proxy=t.proxy, scenario=t.scenario.name)
                runs.append(res)
                log(f"[workers={workers} round {rnd}/{args.rounds}] {t.key:<16} "
                    f"{res['rps']:>9.0f} req/s  p50 {res['p50_ms']:.2f}ms  "
                    f"p99 {res['p99_ms']:.2f}ms  cpu {_fmt(res['cpu_us_per_req'], '.1f')}"
                    f"us/req  errors {res['non_2xx_3xx'] + res['socket_errors']}")
        return summarise(workers, second_label, runs)
    finally:
        for p in reversed(procs):
            p.stop()


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summarise(workers: int, second: str, runs: list[dict]) -> dict:
    summary: dict[str, dict] = {}
    for run in runs:
        summary.setdefault(f"{run['proxy']}/{run['scenario']}", []).append(run)
    medians = {}
    for key, rs in summary.items():
        requests = sum(r["requests"] for r in rs)
        errors = sum(r["non_2xx_3xx"] + r["socket_errors"] for r in rs)
        medians[key] = {
            "rps": _median(r["rps"] for r in rs),
            "p50_ms": _median(r["p50_ms"] for r in rs),
            "p99_ms": _median(r["p99_ms"] for r in rs),
            "cpu_us_per_req": _median(r["cpu_us_per_req"] for r in rs),
            "proxy_cores": _median(r["proxy_cores"] for r in rs),
            "upstream_cores": _median(r["upstream_cores"] for r in rs),
            "wrk_cores": _median(r["wrk_cores"] for r in rs),
            "other_cores": _median(r["other_cores"] for r in rs),
            "requests": requests,
            "errors": errors,
            "rounds": len(rs),
        }
    base = SCENARIOS[0].name
    nginx, other = medians.get(f"nginx/{base}"), medians.get(f"{second}/{base}")
    vs_nginx = {
        "rps": _ratio(other["rps"], nginx["rps"]),
        "cpu_per_req": _ratio(other["cpu_us_per_req"], nginx["cpu_us_per_req"]),
        "p50": _ratio(other["p50_ms"], nginx["p50_ms"]),
        "p99": _ratio(other["p99_ms"], nginx["p99_ms"]),
    }
    vs_nginx["meets_targets"] = (
        vs_nginx["rps"] is not None and vs_nginx["cpu_per_req"] is not None
        and vs_nginx["rps"] >= TARGETS["rps_ratio_min"]
        and vs_nginx["cpu_per_req"] <= TARGETS["cpu_ratio_max"]
        and other["errors"] == 0 and nginx["errors"] == 0
    )
    vs_bare = {}
    for sc in SCENARIOS[1:]:
        m = medians[f"{second}/{sc.name}"]
        vs_bare[sc.name] = {
            "rps": _ratio(m["rps"], other["rps"]),
            "cpu_per_req": _ratio(m["cpu_us_per_req"], other["cpu_us_per_req"]),
            "p50": _ratio(m["p50_ms"], other["p50_ms"]),
            "p99": _ratio(m["p99_ms"], other["p99_ms"]),
        }
    return {"workers": workers, "compared": second, "runs": runs, "medians": medians,
            "ratio_vs_nginx": vs_nginx, "ratio_vs_bare": vs_bare}


def print_report(report: dict) -> None:
    p = report["params"]
    m = report["machine"]
    print()
    print(f"machine: nproc={m['nproc']} (cpu_count={m['cpu_count']}), {m['platform']}, "
          f"{m['nginx']}, {m['wrk']}, python {m['python']}")
    print(f"wrk: wrk --latency -t {p['threads']} -c {p['connections']} -d {p['duration']:g}s "
          f"--timeout {p['timeout']:g}s URL   (warm-up {p['warmup']:g}s, {p['rounds']} rounds, "
          f"median per metric)")
    print(f"upstream: nginx, worker_processes {p['upstream_workers']}, returns 200 "
          f"{UPSTREAM_BODY!r}")
    for cfg in report["configs"]:
        second = cfg["compared"]
        print()
        print(f"== workers={cfg['workers']} (nginx worker_processes {cfg['workers']}) ==")
        print(f"{'proxy/scenario':<20}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'CPU us/req':>12}{'errors':>8}   cores: proxy/upstream/wrk/other")
        for key, med in cfg["medians"].items():
            print(f"{key:<20}{_fmt(med['rps'], '.0f'):>10}{_fmt(med['p50_ms'], '.2f'):>9}"
                  f"{_fmt(med['p99_ms'], '.2f'):>9}{_fmt(med['cpu_us_per_req'], '.1f'):>12}"
                  f"{med['errors']:>8}   {med['proxy_cores']:.2f}/{med['upstream_cores']:.2f}"
                  f"/{med['wrk_cores']:.2f}/{med['other_cores']:.2f}")
        r = cfg["ratio_vs_nginx"]
        verdict = "meets targets" if r["meets_targets"] else "MISSES targets"
        print(f"{second}/nginx: req/s x{_fmt(r['rps'], '.2f')} (target >= "
              f"{TARGETS['rps_ratio_min']}), CPU/req x{_fmt(r['cpu_per_req'], '.2f')} (target <= "
              f"{TARGETS['cpu_ratio_max']}), p50 x{_fmt(r['p50'], '.2f')}, "
              f"p99 x{_fmt(r['p99'], '.2f')}  -> {verdict}")
        for name, rb in cfg["ratio_vs_bare"].items():
            target = SCENARIO_TARGETS.get(name)
            verdict = ""
            if target is not None and rb["rps"] is not None:
                verdict = (f" (target >= {target}) -> "
                           + ("meets target" if rb["rps"] >= target else "MISSES target"))
            print(f"{second} {name}/bare: req/s x{_fmt(rb['rps'], '.2f')}{verdict}, CPU/req "
                  f"x{_fmt(rb['cpu_per_req'], '.2f')}, p50 x{_fmt(rb['p50'], '.2f')}, "
                  f"p99 x{_fmt(rb['p99'], '.2f')}")
        if any(r["process_set_changed"] for r in cfg["runs"]):
            print("warning: a proxy's set of processes changed during a run (CPU may be off)")


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="worker counts to compare (default: 1 2)")
    ap.add_argument("--duration", type=float, default=5.0,
                    help="seconds per measured run (default: %(default)s)")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds of warm-up per target (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measured rounds per configuration (default: %(default)s)")
    ap.add_argument("--connections", type=int, default=50,
                    help="wrk -c (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="wrk -t (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="wrk --timeout, seconds (default: %(default)s)")
    ap.add_argument("--upstream-workers", type=int, default=1,
                    help="worker_processes of the upstream nginx (default: %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2s runs, 1s warm-up, 1 round")
    ap.add_argument("--self-test", action="store_true",
                    help="put a second, identical nginx proxy in guichet's slot")
    ap.add_argument("--guichet-cmd", default=DEFAULT_GUICHET_CMD,
                    help="command template; fields {python} {config} {port} {admin_port} "
                         "{workers} (default: %(default)s)")
    ap.add_argument("--start-timeout", type=float, default=30.0,
                    help="seconds to wait for a server to be ready (default: %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install nginx/wrk when they are missing")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a configuration misses the targets")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    if args.threads > args.connections:
        ap.error("--threads must not exceed --connections")
    return args


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def ensure_tools(allow_install: bool) -> str | None:
    """Install nginx and wrk from Debian's packages when missing; an error message or None."""
    missing = [name for name in ("nginx", "wrk") if shutil.which(name) is None
               and not os.access(servers.NGINX if name == "nginx" else measure.WRK, os.X_OK)]
    if not missing:
        return None
    hint = "apt-get install -y nginx-light wrk (or nginx instead of nginx-light)"
    if not allow_install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"missing {' and '.join(missing)}: {hint}"
    packages = [("nginx-light" if name == "nginx" else name) for name in missing]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
    attempts = [packages, [("nginx" if p == "nginx-light" else p) for p in packages]]
    for i, pkgs in enumerate(attempts):
        if i == 1:
            subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(["apt-get", "install", "-y", *pkgs], env=env).returncode == 0:
            servers.NGINX = shutil.which("nginx") or servers.NGINX
            measure.WRK = shutil.which("wrk") or measure.WRK
            return None
    return f"could not install {' '.join(missing)}: {hint}"


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = ensure_tools(not args.no_install)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    drop_unavailable_scenarios(log)
    ports = free_ports(1 + 3 * len(args.workers))
    report = {
        "machine": {
            "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "nginx": tool_version([servers.NGINX, "-v"]), "wrk": tool_version([measure.WRK, "-v"]),
        },
        "params": {k: getattr(args, k) for k in (
            "workers", "duration", "warmup", "rounds", "connections", "threads", "timeout",
            "upstream_workers", "self_test")},
        "targets": TARGETS,
        "scenarios": [sc.__dict__ for sc in SCENARIOS],
        "configs": [],
    }
    started = time.monotonic()
    upstream = None
    with tempfile.TemporaryDirectory(prefix="guichet-bench-") as tmp_name:
        tmp_root = Path(tmp_name)
        try:
            upstream_port = ports[0]
            upstream = start_nginx("upstream", tmp_root, lambda d: upstream_nginx_conf(
                d, upstream_port, args.upstream_workers))
            wait_ready(upstream, f"http://{HOST}:{upstream_port}/", args.start_timeout)
            for i, workers in enumerate(args.workers):
                cfg_ports = ports[1 + 3 * i: 4 + 3 * i]
                report["configs"].append(run_config(
                    args, tmp_root, workers, upstream, upstream_port, cfg_ports, log))
        except BenchError as err:
            print(f"benchmark failed: {err}", file=sys.stderr)
            return 1
        finally:
            if upstream is not None:
                upstream.stop()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    print(f"\ntotal time {report['elapsed_s']}s")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if args.check and not all(c["ratio_vs_nginx"]["meets_targets"] for c in report["configs"]):
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every started process was stopped", file=sys.stderr)
        sys.exit(130)
