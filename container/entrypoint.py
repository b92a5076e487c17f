"""The image's entrypoint: `python -m job`, running as PID 1 with SIGTERM acting as it does outside a container.

The kernel drops SIGTERM for PID 1 unless the process installs a handler, so without one `docker stop`
(and SageMaker's StopTrainingJob or a spot interruption) during start-up would wait out the grace period and
end in SIGKILL. The job's start-up handler (job.runtime.exit_on_sigterm, which `python -m job` installs first
thing on every path) exits at once; the job replaces it with its checkpointing handler when training starts. It runs
in the same process as the job: no shell sits between the engine's signal and Python.
"""

import runpy

from job import runtime

runtime.exit_on_sigterm()
runpy.run_module("job", run_name="__main__", alter_sys=True)
