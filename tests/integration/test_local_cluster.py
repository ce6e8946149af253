"""`make cluster` (steward-local cluster): a control plane for manual use that starts, serves and stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from steward_harness.kubectl import Kubectl


def test_cluster_command_prints_a_working_kubeconfig_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    log = tmp_path / "stderr.log"
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "steward_harness", "cluster", "--dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as process,
    ):
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.fullmatch(r"export KUBECONFIG=(\S+)\n", line)
            assert match, f"unexpected first line {line!r}; stderr: {log.read_text()}"
            kubectl = Kubectl(Path(match[1]))
            assert kubectl.run("get", "crd", "modeldeployments.steward.dev", "-o", "name").stdout.strip()
            servers = _children(process.pid)
            assert {"etcd", "kube-apiserver"} <= {name for _, name in servers}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()
    assert "stopping" in log.read_text()
    for pid, name in servers:
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) outlived the cluster command"
    assert not state.exists(), "state directory left behind after a clean stop"


def _children(parent: int) -> list[tuple[int, str]]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == parent:
            found.append((int(status.parent.name), fields["Name"].strip()))
    return found
