"""Starts the real vramguard binary with the fake NVML and a scripted calm host.

The Rust harness (tests/python_client.rs) sets VRAMGUARD_BIN (the binary) and
VRAMGUARD_FAKE_NVML (target/debug/build/vramguard-*/out/libnvidia-ml-fake.so).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

import requests

GIB = 1 << 30
BIN = os.environ.get("VRAMGUARD_BIN")
FAKE_NVML = os.environ.get("VRAMGUARD_FAKE_NVML")
MISSING = [name for name, value in (("VRAMGUARD_BIN", BIN), ("VRAMGUARD_FAKE_NVML", FAKE_NVML)) if not value]
TOKEN = "correct-horse-battery-staple"


def write_atomic(path: Path, text: str) -> None:
    """Writes a file the fake NVML or the host reader may be reading: tmp file, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def scenario(
    procs: Optional[List[Tuple[int, int]]] = None, total: int = 24 * GIB, uuid: Optional[str] = None
) -> str:
    """The fake NVML scenario: one 24 GiB GPU where another process holds 2 GiB; `procs` are
    more (pid, bytes) on it. `uuid` is the GPU's (default: the fake's
    GPU-00000000-0000-0000-0000-000000000000)."""
    procs = procs or []
    used = 2 * GIB + sum(b for _, b in procs)
    lines = [f"process 7 {2 * GIB}"] + [f"process {p} {b}" for p, b in procs]
    if uuid is not None:
        lines.append(f"uuid {uuid}")
    return "[gpu]\nname Fake GPU\nmemory_total {}\nmemory_used {}\n{}\n".format(total, used, "\n".join(lines))


def config_text(
    d: Path, token_file: Optional[Path] = None, limit: int = 2, extra: str = "", listen: str = "127.0.0.1:0"
) -> str:
    """The one place the server's config.yaml is written; extend it here. ``limit`` is
    ``max_concurrent_generations``; ``extra`` is appended (whole top-level sections)."""
    auth = f'auth: {{ token_file: "{token_file}" }}\n' if token_file else ""
    return (
        f'listen: "{listen}"\n'
        f'state_dir: "{d / "state"}"\n'
        'sample_interval: "250ms"\n'
        f'gpu: {{ enabled: true, nvml_library: "{FAKE_NVML}", per_process: true }}\n'
        f'host: {{ scripted_file: "{d / "host.txt"}" }}\n'
        "constraints: { cpu_warning_threshold: 1.0, ram_warning_threshold: 1.0,"
        f" max_concurrent_generations: {limit} }}\n" + auth + extra
    )


def listen_addr(line: str) -> str:
    """ADDR from a `listening on http://ADDR` log line, text or JSON."""
    token = line.split("listening on http://", 1)[1].split()[0]
    m = re.match(r"[\w.:\[\]-]+", token)  # stops at a JSON quote or comma
    assert m, f"no address in {line!r}"
    return m.group(0)


class Server:
    """One vramguard process on a free loopback port; ``url`` is its base URL."""

    def __init__(
        self,
        token: Optional[str] = None,
        limit: int = 2,
        extra_config: str = "",
        gpu_uuid: Optional[str] = None,
    ) -> None:
        assert BIN is not None and FAKE_NVML is not None, f"{MISSING} not set"
        self.dir = Path(tempfile.mkdtemp(prefix="vramguard-py-"))
        self.scenario = self.dir / "scenario.txt"
        write_atomic(self.scenario, scenario(uuid=gpu_uuid))
        write_atomic(
            self.dir / "host.txt",
            "cpu_usage_ratio 0.1\nmemory_total_bytes 68719476736\nmemory_available_bytes 51539607552\n",
        )
        token_file = None
        if token is not None:
            token_file = self.dir / "token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
        self._config = (token_file, limit, extra_config)
        self.addr = ""
        self._start("127.0.0.1:0")

    def restart(self) -> None:
        """Kills vramguard (-9) and starts it again on the same port and state directory."""
        self.stop()
        self._start(self.addr)

    def _start(self, listen: str) -> None:
        assert BIN is not None, f"{MISSING} not set"
        token_file, limit, extra_config = self._config
        (self.dir / "config.yaml").write_text(config_text(self.dir, token_file, limit, extra_config, listen))
        env = dict(os.environ, FAKE_NVML_SCENARIO=str(self.scenario), RUST_LOG="info")
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

        def drain() -> None:  # keeps reading so the server never blocks on a full pipe
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.logs.append(line)
                if not found.is_set() and "listening on http://" in line:
                    self.addr = listen_addr(line)
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("vramguard did not start:\n" + "".join(self.logs))
        self.url = f"http://{self.addr}"
        deadline = time.monotonic() + 20
        while requests.get(self.url + "/-/ready", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("vramguard never became ready:\n" + "".join(self.logs))
            time.sleep(0.05)

    def set_scenario(self, text: str) -> None:
        write_atomic(self.scenario, text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
