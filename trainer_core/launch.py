"""Starting a distributed run with `mlx.launch`, and reading what it prints (for the GUI).

    hosts = read_hostfile("hosts.json")                       # [{"ssh": "mac-a", "ips": ["10.0.0.1"]}, ...]
    write_hostfile(expand_hosts(hosts, 2), "run-hosts.json")  # 2 processes on every host
    argv = launch_command("run-hosts.json", "ring", ["train", "--method", "lora", ...])
    ...  for each output line: event = parse_line(line)

A host file is mlx.launch's: a JSON list of hosts, or {"backend": ..., "envs": [...], "hosts": [...]},
each host {"ssh": name to ssh into, "ips": [addresses the ring backend connects to]}; "127.0.0.1"
runs locally without ssh. Every host needs the same Python environment, model and data at the same
paths. mlx.launch itself exits 0 even when a rank fails, so `parse_line` is how a caller learns
which ranks joined and which failed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from trainer_core.errors import UserError

BACKENDS = ("ring", "mpi")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_JOINED = re.compile(r"Distributed run: (\d+) processes joined \((.*?)\);")
_EXITED = re.compile(r"Node with rank (\d+) exited with code (-?\d+)")
_ERROR = re.compile(r"^(?:\[rank (\d+)\] )?error: (.*)$")


def read_hostfile(path) -> list[dict]:
    """The hosts of an mlx.launch host file; UserError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"Host file {path} does not exist. Choose the JSON file listing the machines.") from None
    except (OSError, ValueError) as e:
        raise UserError(f"Host file {path} is not valid JSON ({e}).") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise UserError(f"Host file {path} lists no hosts: expected a JSON list of "
                        '{"ssh": "hostname", "ips": ["10.0.0.2"]} entries.')
    for i, host in enumerate(hosts):
        if not isinstance(host, dict) or not isinstance(host.get("ssh"), str) or not host["ssh"]:
            raise UserError(f"Host file {path}: host {i + 1} needs an \"ssh\" name (e.g. \"mac-studio.local\").")
        if not isinstance(host.get("ips", []), list):
            raise UserError(f"Host file {path}: host {i + 1} ({host['ssh']}): \"ips\" must be a list of addresses.")
    return hosts


def expand_hosts(hosts: list[dict], processes_per_host: int) -> list[dict]:
    """Each host repeated `processes_per_host` times, in order (ranks on one host are consecutive)."""
    if processes_per_host < 1:
        raise UserError("Processes per host must be at least 1.")
    return [dict(host) for host in hosts for _ in range(processes_per_host)]


def write_hostfile(hosts: list[dict], path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(hosts, indent=1), encoding="utf-8")
    return path


def launch_command(hostfile, backend: str, finetune_args: list[str], python: str | None = None,
                   starting_port: int | None = None) -> list[str]:
    """argv that runs `python -m trainer_core *finetune_args` on every host of `hostfile` through mlx.launch
    (the ring backend listens on `starting_port` and up, one port per rank; default mlx.launch's 32323)."""
    if backend not in BACKENDS:
        raise UserError(f"Backend must be one of {', '.join(BACKENDS)} (got {backend!r}).")
    python = python or sys.executable
    launcher = [python, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]
    port = ["--starting-port", str(starting_port)] if starting_port else []
    return [*launcher, "--hostfile", str(hostfile), "--backend", backend, *port, "--",
            python, "-m", "trainer_core", *map(str, finetune_args)]


def parse_line(line: str) -> dict | None:
    """What one line of mlx.launch's output says about the ranks, or None:
    {"joined": [(rank, host), ...]} | {"exited": rank, "code": int} | {"error": message, "rank": rank}."""
    line = _ANSI.sub("", line).strip()
    found = _JOINED.search(line)
    if found:
        pairs = [part.strip().split(" on ", 1) for part in found.group(2).split(",")]
        return {"joined": [(int(rank.split()[1]), host) for rank, host in pairs]}
    found = _EXITED.search(line)
    if found:
        return {"exited": int(found.group(1)), "code": int(found.group(2))}
    found = _ERROR.match(line)
    if found:
        return {"error": found.group(2), "rank": int(found.group(1) or 0)}
    return None
