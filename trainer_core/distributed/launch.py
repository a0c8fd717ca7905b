"""Starting a distributed run with `mlx.launch`, and reading how it went (for the GUI and the CLI).

    hosts = read_hostfile("hosts.json")                       # [{"ssh": "mac-a", "ips": ["10.0.0.1"]}, ...]
    check_backend(hosts, "ring", "hosts.json")                # ring needs "ips" on every host
    write_hostfile(expand_hosts(hosts, 2), "run-hosts.json")  # 2 processes on every host
    argv = launch_command("run-hosts.json", "ring", ["train", "--method", "lora", ...], stop_file=...)
    outcome = Outcome()
    ...  for each output line: outcome.feed(line)
    status, detail = outcome.verdict(run_dir)                 # ("finished"|"stopped", end record) | ("failed", message)

A host file is mlx.launch's: a JSON list of hosts, or {"backend": ..., "envs": [...], "hosts": [...]},
each host {"ssh": name to ssh into, "ips": [addresses the ring backend connects to]}; "127.0.0.1"
(or "localhost", rewritten to it) runs locally without ssh. Every host needs the same Python
environment, model and data at the same paths.

mlx.launch itself exits 0 even when a rank fails, so `Outcome` decides: a rank's `error:` line, a
`rank_failure` event or no `train_end` event in rank 0's metrics.jsonl, or a rank's non-zero exit,
is a failure. `python -m trainer_core.launch` runs mlx.launch that way from a terminal and exits 1
with one line when the run failed.

Resuming from the app: `launch_command` also tells the ranks which host file and backend started them
(FINETUNE_LAUNCH_HOSTFILE / FINETUNE_LAUNCH_BACKEND); rank 0 copies them into `<run>/launch.json`
(`record_launch`, atomic), so the app's Resume can start the same processes again (`read_launch`).

Stopping: the launcher sets FINETUNE_STOP_FILE on every rank; creating that file asks rank 0 (which
runs on the launching machine) to stop, and the ranks agree to stop at the same step after a
checkpoint (`StopFile`, checked at every step boundary). Signals would not reach ranks behind ssh.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from trainer_core.training.callbacks import Callback
from trainer_core.errors import UserError

BACKENDS = ("ring", "mpi")
LOCAL = "127.0.0.1"  # mlx.launch starts a host of exactly this name without ssh
STOP_FILE_VARIABLE = "FINETUNE_STOP_FILE"
HOSTFILE_VARIABLE = "FINETUNE_LAUNCH_HOSTFILE"  # the (expanded) host file the run was launched with
BACKEND_VARIABLE = "FINETUNE_LAUNCH_BACKEND"
LAUNCH_FILE = "launch.json"  # in the run folder: {"world_size", "backend", "hosts"} (record_launch)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_JOINED = re.compile(r"Distributed run: (\d+) processes joined \((.*?)\);")
_EXITED = re.compile(r"Node with rank (\d+) exited with code (-?\d+)")
_ERROR = re.compile(r"^(?:\[rank (\d+)\] )?error: (.*)$")
_PROGRAM_ERROR = re.compile(r"^([\w.-]+(?: [\w-]+)?): error: (.*)$")  # argparse: mlx.launch's ("-c") or finetune's
_ENDED = re.compile(r"^(finished|stopped) at step (\d+)/(\d+)")  # rank 0's last line (progress.py)


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


def check_backend(hosts: list[dict], backend: str, path) -> None:
    """UserError when `hosts` cannot run on `backend` (the ring backend connects to IP addresses)."""
    if backend not in BACKENDS:
        raise UserError(f"Backend must be one of {', '.join(BACKENDS)} (got {backend!r}).")
    for i, host in enumerate(hosts):
        if backend == "ring" and not host.get("ips"):
            raise UserError(f"Host file {path}: host {i + 1} ({host['ssh']}) has no \"ips\": the ring backend "
                            'connects to IP addresses, e.g. "ips": ["10.0.0.2"] (use "127.0.0.1" for this Mac).')


def _local(name: str) -> str:
    return LOCAL if name == "localhost" else name


def expand_hosts(hosts: list[dict], processes_per_host: int) -> list[dict]:
    """Each host repeated `processes_per_host` times, in order (ranks on one host are consecutive);
    "localhost" becomes "127.0.0.1", which mlx.launch runs without ssh."""
    if processes_per_host < 1:
        raise UserError("Processes per host must be at least 1.")
    hosts = [{**host, "ssh": _local(host["ssh"]), "ips": [_local(ip) for ip in host.get("ips", [])]}
             for host in hosts]
    return [dict(host) for host in hosts for _ in range(processes_per_host)]


def write_hostfile(hosts: list[dict], path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(hosts, indent=1), encoding="utf-8")
    return path


def local_starting_port(hosts: list[dict]) -> int | None:
    """When every rank runs on this machine: the first of the consecutive free ports the ring backend
    will listen on (one per rank and IP); else None (mlx.launch's default, 32323)."""
    count = sum(len(host.get("ips") or [None]) for host in hosts)
    if any(host["ssh"] != LOCAL or any(ip != LOCAL for ip in host.get("ips", [])) for host in hosts):
        return None
    return free_port_block(count)


def free_port_block(count: int) -> int | None:
    """The first of `count` consecutive TCP ports free on this machine's loopback (None: none found)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((LOCAL, 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind((LOCAL, port))
            return first
        except OSError:
            continue
    return None


def launch_command(hostfile, backend: str, finetune_args: list[str], python: str | None = None,
                   starting_port: int | None = None, stop_file=None) -> list[str]:
    """argv that runs `python -m trainer_core *finetune_args` on every host of `hostfile` through mlx.launch
    (the ring backend listens on `starting_port` and up, one port per rank; default mlx.launch's 32323).
    `stop_file`: a path whose creation asks the run to stop (see StopFile)."""
    if backend not in BACKENDS:
        raise UserError(f"Backend must be one of {', '.join(BACKENDS)} (got {backend!r}).")
    python = python or sys.executable
    launcher = [python, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]
    port = ["--starting-port", str(starting_port)] if starting_port else []
    stop = ["--env", f"{STOP_FILE_VARIABLE}={stop_file}"] if stop_file else []
    record = ["--env", f"{HOSTFILE_VARIABLE}={Path(hostfile).absolute()}", "--env", f"{BACKEND_VARIABLE}={backend}"]
    return [*launcher, "--hostfile", str(hostfile), "--backend", backend, *port, *stop, *record, "--",
            python, "-m", "trainer_core", *map(str, finetune_args)]


def record_launch(run_dir, world_size: int) -> Path | None:
    """Rank 0 of a launched run: write `<run_dir>/launch.json` (the hosts and backend that started it, from
    $FINETUNE_LAUNCH_HOSTFILE / $FINETUNE_LAUNCH_BACKEND) atomically, for the app's Resume. None, and
    nothing written, when the launch did not say (plain mlx.launch) or its host file does not match."""
    path, backend = os.environ.get(HOSTFILE_VARIABLE), os.environ.get(BACKEND_VARIABLE)
    if not path or backend not in BACKENDS:
        return None
    try:
        hosts = read_hostfile(path)
    except UserError:
        return None
    if len(hosts) != world_size:  # not one entry per rank: not a host file this run can be started from
        return None
    target = Path(run_dir) / LAUNCH_FILE
    tmp = target.with_name(f".{LAUNCH_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"world_size": world_size, "backend": backend, "hosts": hosts}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return target


def read_launch(run_dir) -> dict | None:
    """What `record_launch` wrote for `run_dir`: {"world_size", "backend", "hosts"}, or None (absent or unusable)."""
    try:
        data = json.loads((Path(run_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
        hosts, backend, size = data["hosts"], data["backend"], int(data["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if backend not in BACKENDS or not isinstance(hosts, list) or len(hosts) != size or size < 2 \
            or not all(isinstance(h, dict) and isinstance(h.get("ssh"), str) for h in hosts):
        return None
    return {"world_size": size, "backend": backend, "hosts": hosts}


class StopFile(Callback):
    """Asks the loop to stop once the file named by $FINETUNE_STOP_FILE exists (the GUI's Stop)."""

    def __init__(self, path=None):
        path = path or os.environ.get(STOP_FILE_VARIABLE)
        self.path = Path(path) if path else None

    def should_stop(self) -> bool:
        return self.path is not None and self.path.exists()


def parse_line(line: str) -> dict | None:
    """What one line of mlx.launch's output says about the ranks, or None:
    {"joined": [(rank, host), ...]} | {"exited": rank, "code": int} | {"error": message, "rank": rank}
    | {"ended": "finished"|"stopped", "step": int, "total_steps": int}."""
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
    found = _PROGRAM_ERROR.match(line)
    if found:
        program = "mlx.launch" if found.group(1) == "-c" else found.group(1)
        return {"error": f"{program}: {found.group(2)}", "rank": 0}
    found = _ENDED.match(line)
    if found:
        return {"ended": found.group(1), "step": int(found.group(2)), "total_steps": int(found.group(3))}
    return None


class Outcome:
    """How one mlx.launch run went, from its output lines and rank 0's metrics.jsonl."""

    def __init__(self):
        self.joined: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.exits: list[tuple[int, int]] = []  # (rank, non-zero exit code)
        self.ended: dict | None = None

    def feed(self, line: str) -> dict | None:
        event = parse_line(line)
        if event is None:
            return None
        if "joined" in event:
            self.joined = event["joined"]
        elif "error" in event:
            self.errors.append(event["error"] if not event["rank"] else f"rank {event['rank']}: {event['error']}")
        elif "exited" in event:
            if event["code"] != 0:
                self.exits.append((event["exited"], event["code"]))
        else:
            self.ended = {"status": event["ended"], "step": event["step"], "total_steps": event["total_steps"]}
        return event

    def verdict(self, run_dir=None, stopping: bool = False, since: int = 0) -> tuple[str, object]:
        """("finished" | "stopped", the train_end record) or ("failed", one message).

        The end of training is read from `run_dir`/metrics.jsonl when given (else from rank 0's
        last output line), from byte `since` on (a resumed run: what this launch wrote, not the end
        of the run it continues). `stopping`: a stop was asked, so ending without train_end means an abort.
        """
        ended = self.ended
        if run_dir is not None:
            ends = [r for r in records_since(Path(run_dir) / "metrics.jsonl", since)
                    if r["type"] == "event" and r.get("event") in ("train_end", "rank_failure")]
            ended = ends[-1] if ends else None
        if self.errors:  # rank 0's own words first (every rank says the same about shared input)
            first = next((e for e in self.errors if not e.startswith("rank ")), self.errors[0])
            return "failed", first + self._killed()
        if ended is not None and ended.get("event") == "rank_failure":
            return "failed", str(ended.get("message")) + self._killed()
        if ended is not None:
            return ended["status"], ended
        if stopping:  # a stop that reached the loop ends with train_end: this was an abort
            return "failed", ("Aborted: the processes ended without saving the current step. The last complete "
                              "checkpoint is intact; resume from it on the same processes.")
        if self.exits:
            rank, code = self.exits[0]
            return "failed", f"Process rank {rank} {_exit(code)} before training finished; see the log for its output."
        where = f" in {Path(run_dir) / 'metrics.jsonl'}" if run_dir is not None else ""
        return "failed", (f"The distributed run ended without finishing: rank 0 recorded no end of training{where}. "
                          "A process may have crashed or been stopped from outside; see the log for its output.")

    def _killed(self) -> str:
        """The first rank to end, when a signal ended it: the cause (mlx.launch then terminates the others)."""
        if not self.exits or self.exits[0][1] >= 0:
            return ""
        rank, code = self.exits[0]
        return f" Rank {rank} {_exit(code)}."


def records_since(path, offset: int = 0) -> list[dict]:
    """The complete records of a metrics.jsonl written after byte `offset`, in file order."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    return parse_records(lines)


def parse_records(lines) -> list[dict]:
    """metrics.jsonl records among raw lines; a torn or foreign line is skipped."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "type" in record:
            records.append(record)
    return records


def _exit(code: int) -> str:
    return f"was killed (signal {-code})" if code < 0 else f"exited with status {code}"


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def _record_arguments(launch_args: list[str]) -> list[str]:
    """--env options that let rank 0 record a `--hostfile` launch in the run folder (launch.json), so the
    app's Resume can start it again; none for launches without a host file."""
    hostfile = _option(launch_args, "--hostfile")
    if not hostfile:
        return []
    backend = _option(launch_args, "--backend")
    if backend is None:
        try:
            data = json.loads(Path(hostfile).read_text(encoding="utf-8"))
            backend = data.get("backend") if isinstance(data, dict) else None
        except (OSError, ValueError):
            pass
    backend = backend or "ring"
    return ["--env", f"{HOSTFILE_VARIABLE}={Path(hostfile).absolute()}", "--env", f"{BACKEND_VARIABLE}={backend}"]


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer_core.launch MLX_LAUNCH_ARGS -- train|resume ...`: mlx.launch, but the exit status and a
    last line say whether the run finished (mlx.launch itself exits 0 when a rank failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m trainer_core.launch [mlx.launch options] -- train|resume ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    launcher = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]
    command = [*launcher, *argv[:split], *_record_arguments(argv[:split]), "--", sys.executable, "-m", "trainer_core",
               *argv[split + 1:]]
    outcome, interrupted = Outcome(), []
    # Ctrl-C reaches the ranks too (same terminal): they stop after a checkpoint; keep reporting meanwhile.
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        outcome.feed(line)
    process.wait()
    if interrupted and outcome.ended is None and not outcome.errors:  # mlx.launch stops relaying at Ctrl-C
        print("Interrupted: the processes stop after a checkpoint; `finetune resume RUN_DIR` on the same "
              "processes continues.", file=sys.stderr)
        return 130
    status, detail = outcome.verdict()
    if status == "failed":
        print(f"error: {detail}", file=sys.stderr)
        return 1
    return 0

