"""What GitOps tools make of live objects: Argo CD's health from the chart's Lua script, and kstatus' status (Flux)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lupa.lua51

from steward_harness import binaries

REPOSITORY = Path(__file__).resolve().parents[2]
HEALTH_SCRIPT = REPOSITORY / "charts" / "steward" / "files" / "argocd-health.lua"
KSTATUS_SOURCE = Path(__file__).resolve().parent / "kstatus"
CLI_UTILS = "sigs.k8s.io/cli-utils"
# The health statuses Argo CD accepts from a script; any other comes out as Unknown, with this message.
ARGO_CD_HEALTH = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})
INVALID_HEALTH = "Lua returned an invalid health status"

# The kstatus statuses each Argo CD health may stand beside. kstatus has no Suspended: a paused release has not
# reached what Git asks, so InProgress is right (a model paused while it serves what Git names is Healthy and
# Current). Nor has Argo CD a Terminating: an object on its way out is Progressing there.
KSTATUS_OF = {
    "Healthy": {"Current"},
    "Progressing": {"InProgress", "Terminating"},
    "Suspended": {"InProgress"},
    "Degraded": {"Failed"},
}

# Runs a health script as Argo CD does for one taken from argocd-cm: `obj` and the base and table libraries only
# (no string, math, io or os), and string values without methods, since no string library set their metatable.
_ARGO_CD_VM = """
local source, name, obj = ...
local chunk, problem = loadstring(source, "=" .. name)
if chunk == nil then error(problem, 0) end
local env = {obj = obj, table = table, _VERSION = _VERSION}
for _, base in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
    "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall"}) do
  env[base] = _G[base]
end
env._G = env
setfenv(chunk, env)
local strings = getmetatable("")
local methods = strings.__index
strings.__index = nil
local ok, result = pcall(chunk)
strings.__index = methods
if not ok then error(result, 0) end
return result
"""


class LuaScriptError(RuntimeError):
    """The health script failed or returned no table: Argo CD shows the resource's health as an error."""


def argocd_health(obj: Mapping[str, Any], script: Path = HEALTH_SCRIPT) -> tuple[str, str]:
    """The health Argo CD gives `obj` (a ModelDeployment as the API server returns it) through `script`, run on
    Lua 5.1 (gopher-lua's language) with only what Argo CD lets such a script use: (status, message)."""
    runtime = lupa.lua51.LuaRuntime(unpack_returned_tuples=False)
    run = runtime.compile(_ARGO_CD_VM)
    try:
        result: Any = run(script.read_text(), script.name, runtime.table_from(obj, recursive=True))
    except lupa.lua51.LuaError as error:
        raise LuaScriptError(f"{script.name} failed on {_named(obj)}: {error}") from error
    if lupa.lua51.lua_type(result) != "table":
        raise LuaScriptError(f"{script.name} returned {result!r} for {_named(obj)}, not a table")
    status, message = result["status"], result["message"]
    if status not in ARGO_CD_HEALTH:
        return "Unknown", INVALID_HEALTH
    return str(status), "" if message is None else str(message)


def kstatus(objs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The status kstatus (sigs.k8s.io/cli-utils status.Compute, which Flux reads health with) gives each object:
    Current, InProgress, Failed or Terminating."""
    return [status for status, _ in kstatus_verdicts(objs)]


def kstatus_verdicts(objs: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """kstatus' (status, message) for each object, in order."""
    lines = "".join(json.dumps(obj) + "\n" for obj in objs)
    result = subprocess.run(
        [str(kstatus_binary())], input=lines, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"kstatus failed (exit {result.returncode}): {result.stderr.strip()}")
    # One JSON document a line; split on newlines alone, as str.splitlines() also breaks at U+0085 and U+2028.
    verdicts = [json.loads(line) for line in result.stdout.split("\n") if line]
    return [(verdict["status"], verdict["message"]) for verdict in verdicts]


def cli_utils_version() -> str:
    """The sigs.k8s.io/cli-utils release the kstatus program is built with, as its go.mod pins it."""
    return binaries.required_version((KSTATUS_SOURCE / "go.mod").read_text(), CLI_UTILS)


def kstatus_path(version: str | None = None) -> Path:
    return binaries.CACHE_DIR / "bin" / f"kstatus-{version or cli_utils_version()}" / "kstatus"


def kstatus_binary() -> Path:
    """The kstatus program, built with `go build` the first time (from the module proxy, checked against the
    committed go.sum) and cached per cli-utils release."""
    target = kstatus_path()
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise binaries.BuildError(
            f"the Go toolchain (go) is not on PATH: it is needed once to build kstatus from {CLI_UTILS}"
            f" {cli_utils_version()} into {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed once complete: a half-built binary is never found and run.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / "kstatus"
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
        result = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=KSTATUS_SOURCE,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise binaries.BuildError(f"go build of {KSTATUS_SOURCE} failed:\n{result.stderr.strip()}")
        partial.replace(target)
    return target


def _named(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind', 'object')} {metadata.get('namespace', '')}/{metadata.get('name', '?')}"
