"""Several local processes of one `jax.distributed` job, as the multi-host tests start them."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(command, count: int, env, cwd=None, timeout: int = 900) -> list[tuple[str, str]]:
    """Runs `command(port, i)` (an argv) for i = 0..count-1 at once, on one free coordinator
    port; -> each process's (stdout, stderr), after asserting that every one exited 0."""
    port = free_port()
    procs = [
        subprocess.Popen(
            command(port, i),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs
