"""One place maps errors to exit codes (zmqvision.errors): a bad endpoint is a usage error
that names it, a job that cannot run is 3 with one line, an interrupted job 130, and a bug
keeps its traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import click
import pytest
import zmq
from click.testing import CliRunner

from tests.conftest import ROOT
from zmqvision.cli import Commands, cli
from zmqvision.errors import CommandError, ExitCode, classify

pytestmark = pytest.mark.timeout(120)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqvision", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_exit_codes_are_the_documented_ones():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for code, what in [(ExitCode.OK, "every image succeeded"),
                       (ExitCode.IMAGES_FAILED, "some image failed"),
                       (ExitCode.USAGE, "usage error"),
                       (ExitCode.JOB_FAILED, "the job could not run")]:
        assert f"**{int(code)}** {what}" in readme
    assert ExitCode.INTERRUPTED == 130


@pytest.mark.parametrize(("args", "names"), [
    (["worker", "--tiles", "foo://bar"], "'foo://bar': unknown transport 'foo'"),
    (["worker", "--tiles", "tcp://127.0.0.1:1,tcp://nohost:x"],
     "'tcp://nohost:x': 'x' is not a port"),
    (["worker", "--results", "tcp://h:99999"], "'99999' is not a port"),
    (["worker", "--connect", "nohost:x"], "'nohost:x' is not a host"),
    (["worker", "--connect", "tcp://hostA"], "'tcp://hostA' is an endpoint, not a host"),
    (["sink", "--bind-results", "foo://bar"], "'foo://bar': unknown transport"),
    (["sink", "--bind-events", "tcp://*"], "needs a port"),
    (["ventilate", ".", "--sink-results", "tcp://nohost:x"], "'x' is not a port"),
    (["ventilate", ".", "--sink", "tcp://hostA"], "is an endpoint, not a host"),
    (["ventilate", ".", "--bind", "foo://bar"], "unknown transport"),
    (["watch", "--once", "--connect", "foo://bar"], "unknown transport"),
    (["watch", "--once", "--connect", "nohost:x"], "'tcp://nohost:x': 'x' is not a port"),
    (["run", ".", "--events", "tcp://nohost:x"], "'x' is not a port"),
])
def test_a_bad_endpoint_or_host_is_a_usage_error_that_names_it(args, names, tmp_path,
                                                                monkeypatch):
    """Before: a ZMQError traceback with exit 1 (foo://bar, tcp://nohost:x), or a worker
    that retried `tcp://nohost:x:5557` for ever."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert names in result.output
    assert "Traceback" not in result.output


def test_good_endpoints_pass():
    from zmqvision.cli import endpoint_problem, host_problem

    for endpoint in ("tcp://*:5557", "tcp://127.0.0.1:0", "tcp://[::1]:5557", "tcp://hostA:1",
                     "tcp://eth0:5557", "ipc:///tmp/x", "inproc://zmqvision-1-results",
                     "tcp://10.0.0.1:0;hostB:5558"):
        assert endpoint_problem(endpoint) is None, endpoint
    for host in ("hostA", "10.1.2.3", "::1", "[::1]", "host-b.example.org"):
        assert host_problem(host) is None, host


def _group_with(body) -> click.Group:
    """A command under the real group class, doing ``body`` with a real ZeroMQ socket."""

    @click.group(cls=Commands)
    def group() -> None:
        pass

    @group.command()
    @click.argument("endpoint")
    def go(endpoint) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REQ)
        try:
            body(sock, endpoint)
        finally:
            sock.close(linger=0)
            ctx.term()

    return group


def test_a_zmq_error_from_a_bad_endpoint_is_a_usage_error_in_one_line():
    """What the endpoint checks let through still reaches ZeroMQ: its refusal is a usage
    error naming the endpoint, not 'an image failed' (1) or a traceback."""
    result = CliRunner().invoke(_group_with(lambda s, ep: s.connect(ep)), ["go", "foo://bar"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.output == "zmqvision: bad endpoint 'foo://bar': Protocol not supported\n"


def test_another_zmq_error_is_a_job_that_could_not_run():
    # A REQ socket that receives before it sent: EFSM, nothing to do with an endpoint.
    result = CliRunner().invoke(_group_with(lambda s, ep: s.recv(zmq.NOBLOCK)), ["go", "x"])
    assert result.exit_code == ExitCode.JOB_FAILED, result.output
    assert result.output.startswith("zmqvision: ZeroMQ: ")
    assert result.output.count("\n") == 1


def test_what_a_command_raises_maps_to_one_code_and_message():
    from zmqvision.models.runtime import DeviceError
    from zmqvision.models.store import ModelStoreError
    from zmqvision.security import CurveKeyError
    from zmqvision.ventilator import JobFailed

    assert classify(JobFailed("no sink")) == (ExitCode.JOB_FAILED, "job failed: no sink")
    assert classify(JobFailed("interrupted"), interrupted=True) == (ExitCode.INTERRUPTED,
                                                                    "interrupted")
    assert classify(KeyboardInterrupt()) == (ExitCode.INTERRUPTED, "interrupted")
    assert classify(ModelStoreError("pip failed")) == (ExitCode.JOB_FAILED, "pip failed")
    assert classify(DeviceError("no GPU")) == (ExitCode.JOB_FAILED, "no GPU")
    assert classify(CurveKeyError("run zmqvision keys new")) == (ExitCode.JOB_FAILED,
                                                                 "run zmqvision keys new")
    assert classify(CommandError("said", ExitCode.USAGE)) == (ExitCode.USAGE, "said")
    assert classify(ValueError("a bug")) is None  # keeps its traceback
    assert classify(KeyError("a bug")) is None


def test_a_bug_keeps_its_traceback():
    def body(sock, endpoint):
        raise ValueError("a bug")

    result = CliRunner().invoke(_group_with(body), ["go", "x"])
    assert isinstance(result.exception, ValueError)


@pytest.mark.parametrize("command", ["run", "sink"])
def test_an_unwritable_out_is_said_once_before_anything_starts(command, tmp_path, photos):
    """Before: `run` printed the sink's error twice (its log line, then the job's
    failure) with exit 3, after starting the job."""
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "r.jsonl"
    args = ([command, str(photos[0]), "--no-progress"] if command == "run"
            else [command, "--bind-results", "tcp://127.0.0.1:0",
                  "--bind-events", "tcp://127.0.0.1:0"])
    p = _cli(*args, "--out", str(out))
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert p.stderr.count("r.jsonl") == 1, p.stderr
    assert f"{tmp_path / 'a-file'} is not a directory" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("command", ["run", "ventilate"])
def test_a_model_no_job_runs_alone_is_a_usage_error(command, photos, models_ready):
    """Before: `run --model mobilefacenet` (a face embedder, a second stage) ended in a
    traceback from the task lookup in a child."""
    p = _cli(command, str(photos[0]), "--model", "mobilefacenet", "--no-progress")
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert "mobilefacenet (embedding) is a second-stage model" in p.stderr
    assert "Traceback" not in p.stderr


def test_an_interrupted_job_exits_130(photos, tmp_path):
    """SIGINT while the ventilator waits for a sink: one line, exit 130 (was 3, as if the
    job had failed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqvision", "ventilate", str(photos[0]), "--no-progress",
         "--bind", "tcp://127.0.0.1:0",
         "--sink-results", f"ipc://{tmp_path}/nobody-results",  # no sink there
         "--sink-events", f"ipc://{tmp_path}/nobody-events"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        # The ventilator says it is waiting once its signal handlers are in place.
        line = ""
        deadline = time.monotonic() + 60
        while "no word from the sink" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the ventilator exited early"
        assert "no word from the sink" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == ExitCode.INTERRUPTED
        assert proc.stderr.read().strip() == "zmqvision: interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


def test_the_decorator_is_on_every_command():
    """Every command and group runs under the one top-level group's invoke."""
    assert isinstance(cli, Commands)
    assert Commands.invoke.__wrapped__ is click.Group.invoke
