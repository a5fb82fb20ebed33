"""Where a result came from: the command, the machine and the versions, written beside every number."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from importlib import metadata
from typing import Any

_PACKAGES = ("numpy", "pandas", "pyarrow", "scipy", "simpy", "torch", "transformers", "cupy-cuda12x", "cupy-cuda13x")

def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """A JSON-ready record: command line, UTC time, host, CPU count, Python and package versions."""
    versions = {}
    for name in ("moespeq", *_PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue

    return {
        "command": shlex.join(command if command is not None else ["moespeq", *sys.argv[1:]]),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "versions": versions,
    }
