"""Starts the real vramguard binary with the fake NVML and a scripted calm host.

The Rust harness (tests/python_client.rs) sets VRAMGUARD_BIN and VRAMGUARD_FAKE_NVML.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import requests

GIB = 1 << 30
BIN = os.environ.get("VRAMGUARD_BIN")
FAKE_NVML = os.environ.get("VRAMGUARD_FAKE_NVML")

if not BIN or not FAKE_NVML:
    pytest.skip(
        "VRAMGUARD_BIN and VRAMGUARD_FAKE_NVML are not set (run through cargo test)", allow_module_level=True
    )


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def scenario(procs: Optional[List[tuple[int, int]]] = None, total: int = 24 * GIB) -> str:
    """One GPU; another process holds 2 GiB; `procs` are (pid, bytes)."""
    procs = procs or []
    used = 2 * GIB + sum(b for _, b in procs)
    lines = [f"process 7 {2 * GIB}"] + [f"process {p} {b}" for p, b in procs]
    return "[gpu]\nname Fake GPU\nmemory_total {}\nmemory_used {}\n{}\n".format(total, used, "\n".join(lines))


def config_text(d: Path, token_file: Optional[Path] = None) -> str:
    auth = f'auth: {{ token_file: "{token_file}" }}\n' if token_file else ""
    return (
        'listen: "127.0.0.1:0"\n'
        f'state_dir: "{d / "state"}"\n'
        'sample_interval: "250ms"\n'
        f'gpu: {{ enabled: true, nvml_library: "{FAKE_NVML}", per_process: true }}\n'
        f'host: {{ scripted_file: "{d / "host.txt"}" }}\n'
        "constraints: { max_concurrent_generations: 2 }\n" + auth
    )


class Server:
    def __init__(self, token: Optional[str] = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vramguard-py-"))
        self.scenario = self.dir / "scenario.txt"
        write_atomic(self.scenario, scenario())
        write_atomic(
            self.dir / "host.txt",
            "cpu_usage_ratio 0.1\nmemory_total_bytes 68719476736\nmemory_available_bytes 51539607552\n",
        )
        token_file = None
        if token is not None:
            token_file = self.dir / "token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
        (self.dir / "config.yaml").write_text(config_text(self.dir, token_file))
        env = dict(os.environ, FAKE_NVML_SCENARIO=str(self.scenario), RUST_LOG="info")
        assert BIN is not None
        self.proc = subprocess.Popen(
            [BIN, "--config", str(self.dir / "config.yaml")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.logs: List[str] = []
        found = threading.Event()
        self.addr = ""

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.logs.append(line)
                if not found.is_set() and "listening on http://" in line:
                    self.addr = line.split("listening on http://", 1)[1].split()[0].strip('"')
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("vramguard did not start:\n" + "".join(self.logs))
        self.url = f"http://{self.addr}"
        deadline = time.time() + 20
        while requests.get(self.url + "/-/ready", timeout=5).status_code != 200:
            assert time.time() < deadline, "vramguard never became ready"
            time.sleep(0.05)

    def set_scenario(self, text: str) -> None:
        write_atomic(self.scenario, text)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def server_with_token() -> Iterator[Server]:
    s = Server(token="correct-horse-battery-staple")
    yield s
    s.stop()
