"""How `zmqvision run` sizes its workers: by the cores it may use, not the machine's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zmqvision.run import default_threads, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_cores_follow_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from zmqvision.run import usable_cores, default_threads; "
            "print(usable_cores(), default_threads(1), default_threads(4))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["1", "None", "1"]


def test_workers_share_the_cores():
    cores = usable_cores()
    assert default_threads(1) is None  # one worker: OpenVINO's hint takes every core
    assert default_threads(2) == max(1, cores // 2)
    assert default_threads(cores * 4) == 1
