"""The image's entrypoint: `python -m job`, running as PID 1 with SIGTERM acting as it does outside a container.

The kernel drops SIGTERM for PID 1 unless the process installs a handler, so without one `docker stop`
(and SageMaker's StopTrainingJob or a spot interruption) during start-up would wait out the grace period and
end in SIGKILL. The job's start-up handler (job.runtime.exit_on_sigterm, which `python -m job` installs first
thing on every path) exits at once; the job replaces it with its checkpointing handler when training starts. It runs
in the same process as the job: no shell sits between the engine's signal and Python.

`serve` (SageMaker starts inference containers as `docker run IMAGE serve`) binds 0.0.0.0 unless --host is given:
the engine's port mapping and SageMaker reach the server from outside the container.
"""

import runpy
import sys

from job import runtime

runtime.exit_on_sigterm()
if sys.argv[1:2] == ["serve"] and not any(a == "--host" or a.startswith("--host=") for a in sys.argv[2:]):
    sys.argv[2:2] = ["--host", "0.0.0.0"]
runpy.run_module("job", run_name="__main__", alter_sys=True)
