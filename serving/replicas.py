"""``python -m serving.replicas``: N service processes behind HAProxy, restarted when they die.

Each replica is ``python -m serving`` on ``127.0.0.1:<base port + i>`` with the same settings
(``.env`` and the environment), so they share the profile, the checkpoint and the voice library
folder (whose writers take a file lock). HAProxy listens on ``HOST:PORT``, sends each request to the
replica with the fewest open connections, streams responses through unbuffered (raw audio and SSE),
sets ``X-Forwarded-For`` to the client's address (replacing any the client sent), and health-checks
``GET /health`` every second: a replica that dies, or is loading, is out after two failed checks and
back in after two good ones. A connection refused by a dead replica is re-sent to another one, so
new requests keep succeeding while it is out; requests in flight on it get HAProxy's 502, or a
cut-off stream. This process restarts a replica that exits.

Each replica believes ``X-Forwarded-For`` (so wrong keys and rate limits count per client, not all
as 127.0.0.1) only from the balancer: from 127.0.0.1 (TRUSTED_PROXIES) and carrying the secret this
launcher makes for each run (PROXY_SECRET, sent by HAProxy in ``X-Proxy-Secret``); any other local
process reaching a replica's port is one client at its own address. The balancer limits each source
address (``SOURCE_LIMITS``): connections held and opened, requests a 10 s, and 10 s to send a
request's headers, so one client holding slow connections cannot take it offline for the others.

Prometheus scrapes each replica's ``/metrics/prometheus`` (the replica URLs it logs); counters and
histograms add up across them, which is why the service exports histograms, not quantiles.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from serving.guard import check_exposure
from serving.settings import Settings

log = logging.getLogger("serving.replicas")

STATE_DIR = Path(".replicas")  # haproxy.cfg and the replicas' logs (git-ignored)
HEALTH_INTERVAL_S = 1.0
RESTART_DELAY_S = 2.0
BALANCER_ADDRESS = "127.0.0.1"  # where HAProxy's connections to the replicas come from
# Per source address, in the `frontend` of this launcher's config and of docker/haproxy.cfg alike:
# 64 connections held, 200 opened and 300 requests a 10 s (then a 429 in the service's error
# body), and the client's address and the replicas' PROXY_SECRET (HAProxy's environment) set.
RATE_LIMITED = json.dumps(
    {
        "error": "rate_limited",
        "message": "more than 300 requests in 10 s from this address (the balancer)",
        "type": "rate_limit_error",
    }
)
SOURCE_LIMITS = (
    "    stick-table type ipv6 size 100k expire 60s store "
    "conn_cur,conn_rate(10s),http_req_rate(10s)\n"
    "    tcp-request connection track-sc0 src\n"
    "    tcp-request connection reject if { sc0_conn_cur gt 64 } || { sc0_conn_rate gt 200 }\n"
    "    http-request return status 429 content-type application/json hdr Retry-After 10 "
    f"string '{RATE_LIMITED}' if {{ sc0_http_req_rate gt 300 }}\n"
    "    http-request set-header X-Forwarded-For %[src]\n"
    '    http-request set-header X-Proxy-Secret "${PROXY_SECRET}"\n'
)
# A connection must send a request's headers within 10 s (the service's own HEADER_TIMEOUT_S).
TIMEOUTS = """\
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-request 10s
"""


@dataclass
class Replica:
    """One ``python -m serving`` process on a loopback port."""

    name: str
    port: int
    log_path: Path
    proxy_secret: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = os.environ | {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "TRUSTED_PROXIES": BALANCER_ADDRESS,
            "PROXY_SECRET": self.proxy_secret,
        }
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving"], env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        log.info("replica %s: pid %d on %s", self.name, self.process.pid, self.url)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


def haproxy_config(host: str, port: int, replicas: list[Replica], stats_port: int) -> str:
    """The balancer: least connections, /health checks, retry a refused connection elsewhere,
    per-source limits, and the client's address in X-Forwarded-For (set, never appended to what
    the client sent) beside the replicas' secret."""
    servers = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.port} check inter {HEALTH_INTERVAL_S:.0f}s fall 2 rise 2"
        for r in replicas
    )
    return f"""global
    maxconn 4096

defaults
    mode http
{TIMEOUTS}    retries 2
    option redispatch
    option http-buffer-request

frontend api
    bind {host}:{port}
{SOURCE_LIMITS}    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    http-response set-header X-Replica %s
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
    stats refresh 2s
"""


def find_haproxy() -> str:
    """The haproxy binary; a clear error naming the package when it is missing."""
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )
    if found is None:
        raise SystemExit(
            "haproxy is not installed: `make setup-system` (Debian's haproxy package) or "
            "`apt-get install haproxy`"
        )
    return found


def _parse(argv: list[str] | None) -> argparse.Namespace:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m serving.replicas", description=__doc__)
    parser.add_argument("--replicas", type=int, default=2, help="service processes (2)")
    parser.add_argument("--host", default=settings.host, help="balancer address (HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="balancer port (PORT)")
    parser.add_argument(
        "--base-port", type=int, help="first replica's port (default: balancer port + 100)"
    )
    parser.add_argument("--stats-port", type=int, default=8404, help="HAProxy stats page port")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, help="config and logs")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    args.settings = settings.model_copy(update={"host": args.host, "port": args.port})
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse(argv)
    if refusal := check_exposure(args.settings):
        log.error(refusal)
        sys.exit(2)
    binary = find_haproxy()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    base = args.base_port or args.port + 100
    secret = secrets.token_urlsafe(32)  # new each run; only HAProxy and the replicas know it
    replicas = [
        Replica(f"r{i + 1}", base + i, (args.state_dir / f"r{i + 1}.log").resolve(), secret)
        for i in range(args.replicas)
    ]
    config = args.state_dir / "haproxy.cfg"
    config.write_text(haproxy_config(args.host, args.port, replicas, args.stats_port))
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for replica in replicas:
        replica.start()
    balancer = subprocess.Popen(
        [binary, "-db", "-f", str(config)], env=os.environ | {"PROXY_SECRET": secret}
    )
    log.info(
        "balancer on http://%s:%d (stats http://127.0.0.1:%d/stats); replicas: %s",
        args.host,
        args.port,
        args.stats_port,
        " ".join(r.url for r in replicas),
    )
    try:
        _supervise(replicas, balancer, lambda: stopping)
    finally:
        for process in [balancer, *(r.process for r in replicas if r.process)]:
            process.terminate()
        for process in [balancer, *(r.process for r in replicas if r.process)]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _supervise(
    replicas: list[Replica], balancer: subprocess.Popen[bytes], stopping: Callable[[], bool]
) -> None:
    """Restart replicas that exit; stop when asked or when the balancer itself exits."""
    while not stopping():
        if balancer.poll() is not None:
            log.error("haproxy exited with %s; stopping the replicas", balancer.returncode)
            return
        for replica in replicas:
            code = replica.exited()
            if code is not None:
                replica.restarts += 1
                log.warning(
                    "replica %s exited with %s; restart %d in %.0f s (the balancer's health check "
                    "takes it back once /health answers 200)",
                    replica.name,
                    code,
                    replica.restarts,
                    RESTART_DELAY_S,
                )
                time.sleep(RESTART_DELAY_S)
                replica.start()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
