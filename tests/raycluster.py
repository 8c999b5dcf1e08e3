"""A real multi-node Ray cluster on 127.0.0.1 for tests: `ray start` head + worker nodes.

Each node is its own `ray start --block` process group with its own `--temp-dir` and its own
`SYNTH_CACHE_DIR` (no shared cache, no shared output directory), 1 CPU, a small object store, and
`RAY_AUTH_MODE=disabled` (Ray 2.60 refuses a second node and the driver with InvalidAuthToken
otherwise). Nodes are stopped by killing THEIR process groups and any process whose command line names
their temp dir; never `ray stop`, which kills every Ray on the machine (other users' embedded Rays).
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE = 100 * 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    temp_dir: Path  # short: Ray's unix socket paths must stay under ~107 characters
    cache_dir: Path

    def kill(self) -> None:
        """SIGKILL the node: its process group, then any stray process of its temp dir (raylet workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pid in _pids_naming(str(self.temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    port: int = 0
    dashboard_port: int = 0
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], num_cpus: int) -> Node:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"r{name}", dir="/tmp"))
        cache_dir = self.root / f"cache-{name}"
        cache_dir.mkdir(exist_ok=True)
        env = {**self.env, "SYNTH_CACHE_DIR": str(cache_dir)}
        cmd = [RAY, "start", "--block", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
               f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", *args]  # fmt: skip
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115  # lives as long as the node
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, process, temp_dir, cache_dir)
        self.nodes.append(node)
        return node

    def _start_until_up(self, name: str, args: list[str], num_cpus: int, tries: int = 3) -> Node:
        """Start a node and wait for `ray start` to report it up. On a loaded machine a raylet can miss
        Ray's fixed 30 s registration window ("timed out during startup"): that node is killed and
        started again."""
        for attempt in range(tries):
            node = self._start(name, args, num_cpus)
            log = self.root / f"{name}.log"
            deadline = time.monotonic() + 180
            while node.process.poll() is None and time.monotonic() < deadline:
                if "Ray runtime started" in log.read_text(errors="replace"):
                    return node
                time.sleep(0.5)
            node.kill()
            self.nodes.remove(node)
            if attempt < tries - 1:
                log.rename(log.with_suffix(f".failed{attempt}.log"))
        raise RuntimeError(f"Ray node {name} did not start: {log.read_text(errors='replace')[-1500:]}")

    def start_head(self, dashboard: bool) -> Node:
        self.port = free_port()
        self.dashboard_port = free_port()
        port = f"--dashboard-port={self.dashboard_port}"
        dash = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", port]
        args = ["--head", f"--port={self.port}", *(dash if dashboard else ["--include-dashboard=false"])]
        return self._start_until_up("head", args, 0)  # 0 CPUs: every shard is written on a worker node

    def start_worker(self, name: str) -> Node:
        return self._start_until_up(name, [f"--address={self.address}"], 1)

    def wait_for_cpus(self, cpus: int, timeout_s: float = 120) -> None:
        """Block until the cluster offers `cpus` CPUs (all worker nodes joined)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(int(ray.cluster_resources().get('CPU', 0)))"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(
                [sys.executable, "-c", code, self.address], env=self.env, capture_output=True, text=True
            )
            if out.returncode == 0 and out.stdout.strip() and int(out.stdout.split()[-1]) >= cpus:
                return
            time.sleep(1)
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in self.root.glob("*.log")}
        raise RuntimeError(f"the test Ray cluster did not reach {cpus} CPUs: {logs}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()


def cluster_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of the nodes and drivers: this process's, this checkout first on the path."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **extra, "RAY_AUTH_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.pop("RAY_ADDRESS", None)
    return env
