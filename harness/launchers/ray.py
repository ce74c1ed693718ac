"""``launcher=ray``: a sweep's trials spread over every GPU of a Ray cluster.

Each trial is a Ray task that owns one whole GPU (``num_gpus=1``, so never two trials on one GPU)
and runs in a fresh worker process (``max_calls=1``); inside it ``execute_trial`` spawns the trial
child exactly as the local launcher does, so the timeout, the FAILED-with-reason records, the
isolation watch and the NOISY re-run all hold. The baseline runs first and alone; candidates
follow, as many at once as there are GPUs. One sweep targets one hardware kind (its ``hardware``
preset): sweep each kind of GPU in the cluster separately, each against its own baseline.

``RAY_ADDRESS`` (or ``launcher.address``) joins an existing cluster, whose nodes must see the
checkpoint and reference at the same paths; without one a local Ray instance starts, bound to
127.0.0.1 (not the machine's network address), with its files (sessions, logs, spilled objects and
the auth token its clients present) in ``local_dir()``, not in ``/tmp/ray`` and ``~/.ray``.
A trial's folder travels back with its record, so the driver logs the same artifacts as a local
sweep. Without GPUs, parallel trials would share CPUs and disturb each other's timings: one at a
time, unless ``launcher.allow_shared_cpu=true`` (tests).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from rich.console import Console

from engine.errors import ConfigError
from harness.sweep.attempt import TrialContext, execute_trial
from harness.sweep.config import SweepConf
from harness.sweep.grid import TrialSpec
from harness.trial.record import TrialRecord

log = logging.getLogger(__name__)
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # records and trial folders only: a few MB each
LOOPBACK = "127.0.0.1"


def run_on_worker(spec: TrialSpec, ctx: TrialContext) -> tuple[TrialRecord, dict[str, bytes], str]:
    """The Ray task: one trial in this fresh worker, its folder's files, and where it ran."""
    record = execute_trial(spec, ctx)
    folder = ctx.folder.trial_dir(spec.config_hash)
    files = {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }
    return record, files, f"Ray worker pid {os.getpid()} on {socket.gethostname()}"


def local_dir() -> Path:
    """Where a local Ray cluster's files go: a folder of this user's alone under the system's
    temp folder (``$TMPDIR``, else /tmp), short since Ray's socket paths must fit in 107 bytes;
    ``ray/`` in it is Ray's temp folder (sessions, logs, spilled objects; Ray opens it to all, the
    folder around it keeps others out), ``auth_token`` the token its clients present."""
    return Path(tempfile.gettempdir()) / f"fishbench-ray-{getpass.getuser()}"


def _private_folder(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(f"{path} holds a Ray auth token: it must be yours alone (chmod 700)")
    return path


def _local_token(folder: Path) -> None:
    """Ray's token auth for the local cluster, the token kept in ``folder`` rather than written
    to ``~/.ray/auth_token``; a token or mode the user set (``RAY_AUTH_*``) wins."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or any(
        os.environ.get(key) for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    ):
        return
    token = folder / "auth_token"
    if not token.is_file():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as sink:
            sink.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)  # inherited by the cluster's processes


@contextlib.contextmanager
def _this_machine() -> Iterator[None]:
    """Two of Ray's defaults made for clusters, off while the local cluster starts.

    On Linux Ray turns 127.0.0.1 into the machine's network address, and its servers listen on
    every interface, unless it runs in its single-machine mode (its default on macOS and
    Windows), where all of them bind to 127.0.0.1. And under ``uv run`` (as ``make`` runs us)
    Ray ships the current folder, ``.venv`` included (7.5 GB here), into every session for its
    workers to ``uv run`` in: on one machine they run this interpreter as it is."""
    before = ray_constants.ENABLE_RAY_CLUSTER, ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER, ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = before


def _start_local() -> None:
    folder = _private_folder(local_dir())
    _local_token(folder)
    with _this_machine():
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _temp_dir=str(folder / "ray"),
        )
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        log.warning("the local Ray cluster listens on %s, not %s", address, LOOPBACK)
    log.info("local Ray cluster on %s; its sessions, logs and auth token in %s", address, folder)


def connect(conf: SweepConf) -> None:
    """Join ``launcher.address`` / ``RAY_ADDRESS``, or start a local Ray instance."""
    if ray.is_initialized():
        return
    address = conf.launcher.address or os.environ.get("RAY_ADDRESS")
    if address is None:
        _start_local()
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    log.info("Ray cluster: %s", ray.cluster_resources())


def slots(conf: SweepConf) -> tuple[int, dict[str, Any]]:
    """How many trials run at once, and the resources each task claims."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if conf.hardware.device == "cuda":
        if gpus == 0:
            raise ConfigError(f"hardware={conf.hardware.name} needs GPUs; the Ray cluster has none")
        return gpus, {"num_gpus": 1}
    if not conf.launcher.allow_shared_cpu:
        log.warning(
            "no GPU in the Ray cluster: trials run one at a time, since side by side on shared "
            "CPUs they would disturb each other's timings (launcher.allow_shared_cpu=true "
            "overrides)"
        )
        return 1, {"num_cpus": cpus}
    return cpus, {"num_cpus": 1}


def _land(ctx: TrialContext, spec: TrialSpec, result: Any) -> TrialRecord:
    """The record a task returned, its files written here; a lost task as a FAILED record."""
    try:
        record, files, worker = ray.get(result)
    except ray.exceptions.RayError as exc:
        record = spec.record()
        first = str(exc).strip().splitlines()
        record.reason = f"Ray task failed: {type(exc).__name__}: {first[0] if first else ''}"
        log.warning("trial %s FAILED: %s", spec.name, record.headline)
        return record
    folder = ctx.folder.trial_dir(spec.config_hash)
    for name, data in files.items():
        path = folder / name
        if not path.is_file():  # another node: bring the artifacts to the driver
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    record.notes["worker"] = worker
    return record


def run_on_ray(
    ctx: TrialContext,
    specs: list[TrialSpec],
    finished: dict[str, TrialRecord],
    done: Callable[[TrialSpec, TrialRecord], None],
    console: Console,
) -> None:
    """Run ``specs`` (baseline first, alone) on the cluster, calling ``done`` as each lands;
    finished (resumed) and not-runnable specs are handed to ``done`` without a task."""
    connect(ctx.conf)
    parallel, resources = slots(ctx.conf)
    task = ray.remote(max_calls=1, max_retries=0)(run_on_worker).options(**resources)
    queue: list[TrialSpec] = []
    for spec in specs:
        if spec.config_hash in finished:
            done(spec, finished[spec.config_hash])
        elif not spec.runs:
            done(spec, execute_trial(spec, ctx))
        else:
            queue.append(spec)
    if queue and queue[0].is_baseline:
        baseline = queue.pop(0)
        done(baseline, _land(ctx, baseline, task.remote(baseline, ctx)))
    pending: dict[Any, TrialSpec] = {}
    while queue or pending:
        while queue and len(pending) < parallel:
            spec = queue.pop(0)
            pending[task.remote(spec, ctx)] = spec
        ready, _ = ray.wait(list(pending), num_returns=1)
        spec = pending.pop(ready[0])
        done(spec, _land(ctx, spec, ready[0]))
    console.log(f"Ray: {len(specs)} trials, up to {parallel} at once")
