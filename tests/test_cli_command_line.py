"""`zmqvision run` starts its sink and workers with command lines generated from
SinkConfig and WorkerConfig: every field has a flag (or is named as not passed), and the
real commands parse the generated lines back into the very same configs."""

from __future__ import annotations

import dataclasses

import pytest

from zmqvision.cli import cli, sink_config, worker_config
from zmqvision.command_line import (
    NOT_PASSED,
    SINK_FLAGS,
    WORKER_FLAGS,
    UnmappedField,
    command_args,
    unmapped,
)
from zmqvision.run import sink_args, worker_args
from zmqvision.sink import SinkConfig
from zmqvision.worker import WorkerConfig

# What `run`'s Child adds to every child's command line.
CHILD_EXTRAS = ["--announce", "--parent-pid", "1", "--log-level", "30"]


def _parse(args: list[str]) -> dict:
    """The params the real command's click parsing gives for a generated command line."""
    command = cli.commands[args[0]]
    with command.make_context(args[0], args[1:] + CHILD_EXTRAS) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize(("config", "table"), [(SinkConfig, SINK_FLAGS),
                                               (WorkerConfig, WORKER_FLAGS)])
def test_every_config_field_has_a_flag_or_is_named_as_not_passed(config, table):
    assert unmapped(config, table) == [], (
        f"add these {config.__name__} fields to zmqvision/command_line.py")


def test_a_new_field_without_a_flag_stops_the_command_line():
    @dataclasses.dataclass(frozen=True)
    class Grown(SinkConfig):
        new_knob: int = 1

    with pytest.raises(UnmappedField, match="new_knob"):
        command_args("sink", Grown(), SINK_FLAGS)


def _sinks(tmp_path):
    yield SinkConfig()  # the defaults
    yield SinkConfig(results="tcp://127.0.0.1:7001", events=f"ipc://{tmp_path}/events",
                     events_fallback="tcp://127.0.0.1:0", out=str(tmp_path / "r.json"),
                     format="coco", draw=str(tmp_path / "drawn"), append=False, once=True,
                     cache=f"sqlite:///{tmp_path}/c.sqlite3", curve=str(tmp_path / "keys"))
    yield SinkConfig(out=str(tmp_path / "r.jsonl"), append=True, cache=None)


def test_sink_command_lines_parse_back_to_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is checked to be writable here
    for cfg in _sinks(tmp_path):
        args = sink_args(cfg)
        assert args[0] == "sink"
        assert sink_config(_parse(args)) == cfg, args


def test_worker_command_lines_parse_back_to_the_same_config(tmp_path):
    configs = [
        WorkerConfig(),  # the defaults
        WorkerConfig(tiles=f"tcp://127.0.0.1:7001,ipc://{tmp_path}/tiles",
                     results="tcp://hostA:5558", model="ssd-mobilenetv2-oid",
                     input_size=(320, 240), device="AUTO", threads=3, hint="LATENCY",
                     requests=2, score_threshold=0.35, heartbeat_s=0.25, worker_id="w-1",
                     curve=str(tmp_path / "keys")),
    ]
    for cfg in configs:
        args = worker_args(cfg)
        assert args[0] == "worker"
        assert worker_config(_parse(args)) == cfg, args


def test_fields_not_passed_are_left_to_the_childs_defaults():
    """Pacing knobs and test hooks stay off the children's command lines (the worker's
    throttle is a test hook, reached only through the worker command's own flag)."""
    passed = {n for n, e in {**SINK_FLAGS, **WORKER_FLAGS}.items() if e is not NOT_PASSED}
    assert not {"status_s", "progress_s", "throttle_ms"} & passed
    assert "--status-s" not in sink_args(SinkConfig(status_s=9.0))
