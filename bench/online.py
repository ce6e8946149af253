"""Online serving benchmark: Steward's predictor against a minimal KServe model and in-process predict,
side by side in one run, on the same pipeline and payloads."""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.support import models  # noqa: E402

from steward_harness.servers import free_ports  # noqa: E402


def _serve(command: list[str], port: int, name: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", f"/v1/models/{name}")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[2]} did not become ready:\n{log.read_text()[-2000:]}")


def _measure(port: int, name: str, bodies: list[bytes], seconds: float) -> list[float]:
    """Closed loop over one keep-alive connection; the latency of each request, in seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    end = time.perf_counter() + seconds
    index = 0
    while time.perf_counter() < end:
        body = bodies[index % len(bodies)]
        index += 1
        started = time.perf_counter()
        connection.request(
            "POST", f"/v1/models/{name}:predict", body=body, headers={"content-type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    connection.close()
    return latencies


def _summary(latencies: list[float], rows: int) -> dict[str, float]:
    ordered = sorted(latencies)
    total = sum(latencies)
    return {
        "requests/s": len(latencies) / total,
        "rows/s": len(latencies) * rows / total,
        "p50 ms": 1000 * ordered[len(ordered) // 2],
        "p99 ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per server, batch size and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median round is reported)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="steward-bench-"))
    trained = models.breast_cancer(work)
    pipeline_file = trained.path / "pipeline.skops"
    pool = pd.concat([trained.x_test] * 10, ignore_index=True)
    payloads = {
        size: [json.dumps({"instances": models.records(pool.iloc[i : i + size])}).encode() for i in range(0, 200, 7)]
        for size in (1, 100)
    }
    steward_port, minimal_port = free_ports(2)
    servers = {
        "steward": _serve(
            [
                sys.executable,
                "-m",
                "steward_predictor",
                "--model_name=bc",
                f"--model_dir={trained.path}",
                f"--http_port={steward_port}",
                "--enable_grpc=false",
                "--enable_latency_logging=false",
            ],
            steward_port,
            "bc",
            work / "steward.log",
        ),
        "minimal kserve": _serve(
            [
                sys.executable,
                str(REPOSITORY / "bench" / "minimal_model.py"),
                "--model_name=bc",
                f"--pipeline={pipeline_file}",
                f"--http_port={minimal_port}",
                "--enable_grpc=false",
                "--enable_latency_logging=false",
            ],
            minimal_port,
            "bc",
            work / "minimal.log",
        ),
    }
    ports = {"steward": steward_port, "minimal kserve": minimal_port}
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for size in (1, 100):
            for port in ports.values():
                _measure(port, "bc", payloads[size], 1.0)  # warm up
            for _ in range(args.rounds):
                for name, port in ports.items():
                    results.setdefault((name, size), []).append(
                        _summary(_measure(port, "bc", payloads[size], args.seconds), size)
                    )
            # In-process: the pipeline alone, on frames already built.
            frames = [pd.DataFrame.from_records(json.loads(body)["instances"]) for body in payloads[size]]
            for _ in range(args.rounds):
                latencies, end, index = [], time.perf_counter() + args.seconds, 0
                while time.perf_counter() < end:
                    started = time.perf_counter()
                    trained.pipeline.predict(frames[index % len(frames)])
                    latencies.append(time.perf_counter() - started)
                    index += 1
                results.setdefault(("in-process predict", size), []).append(_summary(latencies, size))
    finally:
        for process in servers.values():
            process.terminate()
            process.wait()

    def median(name: str, size: int, key: str) -> float:
        return statistics.median(run[key] for run in results[(name, size)])

    print(
        f"\nonline serving, breast-cancer pipeline ({len(trained.x_train.columns)} features), "
        f"{args.rounds} alternating rounds of {args.seconds:.0f} s, median round, one keep-alive connection"
    )
    print(f"{'batch':>5}  {'server':<20} {'requests/s':>11} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for size in (1, 100):
        for name in ("steward", "minimal kserve", "in-process predict"):
            print(
                f"{size:>5}  {name:<20} {median(name, size, 'requests/s'):>11.1f} {median(name, size, 'rows/s'):>10.0f}"
                f" {median(name, size, 'p50 ms'):>8.2f} {median(name, size, 'p99 ms'):>8.2f}"
            )
    print("\nratios, steward / minimal kserve (goals: throughput >= 0.90, p50 <= 1.10)")
    verdicts = []
    for size in (1, 100):
        throughput = median("steward", size, "requests/s") / median("minimal kserve", size, "requests/s")
        p50 = median("steward", size, "p50 ms") / median("minimal kserve", size, "p50 ms")
        ok = throughput >= 0.9 and p50 <= 1.1
        verdicts.append(ok)
        print(
            f"  batch {size:>3}: throughput {throughput:.2f}x, p50 {p50:.2f}x  {'meets' if ok else 'MISSES'} the goal"
        )
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
