"""PID 1 of a SageMaker training job on the Hugging Face DLC: starts the SageMaker SDK's own driver, passes SIGTERM
on to the job, and exits with the driver's code.

    python3 /opt/ml/input/data/code/sm_pid1.py /bin/bash -c "chmod +x .../sm_train.sh && .../sm_train.sh"

The SDK runs its driver (`sm_drivers/sm_train.sh`) with `/bin/bash` as the container's entrypoint. As PID 1, bash
never sees SIGTERM (the kernel drops it for a PID 1 without a handler), so StopTrainingJob and spot interruptions
would reach the job only as SIGKILL 120 s later, with no final checkpoint. This wrapper is PID 1 instead: the
driver runs unchanged in its own process group, and SIGTERM goes to that whole group (bash, pip, python, torchrun
and its workers). The wrapper then reaps every process until the last one is gone, so a job that outlives a bash
killed by the same signal still finishes writing its checkpoint before the container ends.

It also holds the image's torch for the driver's `pip install -r requirements.txt` (PIP_CONSTRAINT), as the
Dockerfile does for our own image: the DLC's CUDA build of torch must stay. Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from importlib import metadata

PR_SET_CHILD_SUBREAPER = 36


def hold_torch(env: dict[str, str]) -> None:
    """Point pip at a constraint file holding torch at the installed version (none when torch is absent)."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return
    fd, path = tempfile.mkstemp(prefix="torch-constraint-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"torch=={version}\n")
    env["PIP_CONSTRAINT"] = " ".join(p for p in (env.get("PIP_CONSTRAINT", ""), path) if p)
    print(f"sm_pid1: pip keeps torch=={version}", flush=True)


def become_subreaper() -> None:
    """Outside a container (PID 1 reaps orphans anyway) still collect the job if the driver's bash dies first."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def code_of(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal that ended the process."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: sm_pid1.py DRIVER [ARG ...]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    hold_torch(env)
    become_subreaper()
    driver = subprocess.Popen(argv, env=env, start_new_session=True)

    def forward(signum: int, frame: object) -> None:
        print(f"sm_pid1: {signal.Signals(signum).name} received: passing it to the job", flush=True)
        try:
            os.killpg(driver.pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)

    code = None
    while True:  # the driver, and every process it leaves behind (they are re-parented to this one)
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == driver.pid:
            code = code_of(status)
            driver.returncode = code  # Popen must not wait for it again
    return 1 if code is None else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
