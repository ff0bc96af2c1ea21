"""How fast the listing commands answer, against a bare ``python -c "import torch"`` in the same run.

Each command runs as a user runs it (a fresh ``python -m xviz ...`` process, every installed plugin
loaded); the median of ``--repeats`` runs is compared with the median of ``import torch``. Target:
each listing command under a third of ``import torch``. Peak memory (max RSS) of each process too.

    python benchmarks/cli_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from timing import median_time

COMMANDS = [["--version"], ["--help"], ["methods"], ["models"], ["datasets"], ["recipes"], ["plugins"]]


def run(argv: list[str], env: dict) -> None:
    subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def peak_mib(code: str, env: dict) -> float:
    """Peak RSS of a fresh interpreter running ``code``, in MiB."""
    probe = (f"{code}\nimport resource, sys\n"
             "sys.__stderr__.write('RSS %d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return int(done.stderr.rsplit("RSS ", 1)[1]) / 1024


def xviz_code(command: list[str]) -> str:
    return ("import contextlib, io\nfrom xviz.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({command!r})\n    except SystemExit:\n        pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XVIZ_")}
    torch_s = median_time(lambda: run(["-c", "import torch"], env), args.repeats, warmup=True)
    print(f"python -c 'import torch': {torch_s:.3f} s (median of {args.repeats}), "
          f"peak RSS {peak_mib('import torch', env):.0f} MiB")
    print(f"{'command':<18} {'seconds':>8} {'/ torch':>8}  peak RSS")
    worst = 0.0
    for command in COMMANDS:
        seconds = median_time(lambda: run(["-m", "xviz", *command], env), args.repeats, warmup=True)
        worst = max(worst, seconds / torch_s)
        print(f"xviz {' '.join(command):<13} {seconds:8.3f} {seconds / torch_s:8.2f}  "
              f"{peak_mib(xviz_code(command), env):.0f} MiB")
    print(f"slowest listing command: {worst:.2f} x import torch (target < 0.33): "
          + ("met" if worst < 1 / 3 else "NOT met"))


if __name__ == "__main__":
    main()
