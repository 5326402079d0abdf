"""Multi-process tests: each test starts real processes of one job (see `launch`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ckpt():
    """Run the `ckpt` command on a directory; returns its parsed `--json` output."""

    def run(*args: Any, json_output: bool = True, env: dict[str, str] | None = None) -> Any:
        command = [
            sys.executable,
            "-c",
            "import sys; from ckpt_core.cli import main; sys.exit(main())",
        ]
        command += [str(a) for a in args] + (["--json"] if json_output else [])
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout) if json_output else done.stdout

    return run


from tests.s3.conftest import s3_run, s3_server  # noqa: E402, F401  (the local S3 server)
