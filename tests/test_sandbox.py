"""The code-reward sandbox contains a fork bomb, an infinite loop, a write outside its folder and a network call."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from brainstacks_core.training.rewards import make_code_reward
from brainstacks_core.training.sandbox import SandboxLimits, run_python

LIMITS = SandboxLimits(wall_s=4, cpu_s=1)


def test_a_passing_program_passes_and_may_write_inside_its_folder():
    r = run_python("open('x.txt', 'w').write('ok')\nassert open('x.txt').read() == 'ok'\n", LIMITS)
    assert r.passed and r.reason == "passed"


def test_fork_bomb_is_contained():
    # bounded so that a sandbox without the guard cannot hurt the machine: 64 children sleeping 1 s
    bomb = "import os, time\nfor _ in range(64):\n    if os.fork() == 0:\n        time.sleep(1)\n        os._exit(0)\n"
    r = run_python(bomb, LIMITS)
    assert not r.passed and "os.fork" in r.reason


def test_infinite_loop_is_killed():
    r = run_python("while True:\n    pass\n", LIMITS)
    assert not r.passed and ("cpu limit" in r.reason or "timeout" in r.reason)
    assert r.seconds < LIMITS.wall_s + 2


def test_write_outside_the_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')\n", LIMITS)
    assert not r.passed and "outside the sandbox folder" in r.reason
    assert not target.exists()


def test_network_call_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        r = run_python(f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n",
                       LIMITS)
        assert not r.passed and "socket" in r.reason
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_subprocess_is_refused():
    r = run_python("import subprocess\nsubprocess.run(['true'])\n", LIMITS)
    assert not r.passed and "subprocess" in r.reason


def test_code_reward_scores_through_the_sandbox():
    tests = "assert add_2(1) == 3"
    reward = make_code_reward(LIMITS)
    good = "```python\ndef add_2(x):\n    return x + 2\n```"
    wrong = "```python\ndef add_2(x):\n    return x\n```"
    hostile = "```python\nimport os\nos.fork()\ndef add_2(x):\n    return x + 2\n```"
    assert reward(None, [good, wrong, hostile, "def (:"], [tests] * 4) == pytest.approx([1.0, 0.3, 0.3, 0.0])
