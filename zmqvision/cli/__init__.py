"""The ``zmqvision`` command. Parses and validates, then calls one function per command.

Exit codes (errors.ExitCode): 0 every image succeeded; 1 some image failed (its record
says why); 2 usage error; 3 the job could not run (no model, no sink, every worker died,
timeout); 130 interrupted. Commands raise; errors.exit_codes, around every command, turns
what they raise into one line and its code.

One module per command or family of commands, each registering on the group
(``group.cli``); what several share is in ``params`` (parameter types), ``options``
(option sets and their checks) and ``job_setup`` (a job's config from options). Heavy
modules (OpenVINO, the sink, the worker) are imported inside the commands that run them:
`zmqvision models list` loads neither.
"""

from zmqvision.cli import (  # noqa: F401  (each registers its commands on the group)
    cache_commands,
    face_commands,
    job_commands,
    key_commands,
    model_commands,
    role_commands,
    serve_command,
    train_command,
)
from zmqvision.cli.entry import main
from zmqvision.cli.group import Commands, cli
from zmqvision.cli.params import ByteSizeType, endpoint_problem, host_problem
from zmqvision.cli.role_commands import sink_config, worker_config

__all__ = ["ByteSizeType", "Commands", "cli", "endpoint_problem", "host_problem", "main",
           "sink_config", "worker_config"]
