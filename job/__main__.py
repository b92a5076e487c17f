import sys

from job import runtime

runtime.exit_on_sigterm()  # before the heavy imports: a stop during start-up ends the job at once, on every path

from job.cli import main  # noqa: E402

sys.exit(main())
