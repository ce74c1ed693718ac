"""Schemathesis against the live /openapi.json: whatever it generates, never a 5xx, and every
4xx carries the service's error body ``{error, message, type}`` (three strings).

The CLI is used rather than the pytest plugin: schemathesis 4.32's lazy fixture loader writes
``Function._nodeid``, which pytest 9 no longer has. The body check is a custom check loaded
through ``SCHEMATHESIS_HOOKS``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.service

ERROR_BODY_CHECK = """
import schemathesis


@schemathesis.check
def error_body(ctx, response, case):
    \"\"\"A 4xx answers the stable error body: {error, message, type}, each a string.\"\"\"
    if not 400 <= response.status_code < 500:
        return None
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{status} without a JSON body: {response.text[:200]!r}")
    shape = isinstance(body, dict) and all(
        isinstance(body.get(key), str) and body[key] for key in ("error", "message", "type")
    )
    if not shape:
        raise AssertionError(f"{status} body is not {{error, message, type}}: {body!r}")
    return None
"""


def test_generated_requests_never_get_a_5xx_and_4xx_bodies_keep_their_shape(
    server, tmp_path
) -> None:
    (tmp_path / "error_body_check.py").write_text(ERROR_BODY_CHECK)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "error_body_check",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
        "--checks", "not_a_server_error,error_body",
        "--max-examples", "10",
        "--request-timeout", "120",
        "--seed", "20240501",
        "--generation-database", "none",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout  # a hook module that does not load, or an unknown check
    # name, ends the run with an error instead
