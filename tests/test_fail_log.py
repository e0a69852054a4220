"""tests/conftest.py's ARCHDSL_FAIL_LOG: each failure written down as it happens, once, with or without xdist."""
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(not os.environ.get("ARCHDSL_FAIL_LOG_DEMO"), reason="run by the test below, in its own pytest")
@pytest.mark.parametrize("n", [1, 2])
def test_fails_on_purpose(n):
    assert n == 0, f"failure number {n}, on purpose"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_each_failure_is_logged_once_as_it_happens(workers, tmp_path):
    log = tmp_path / "failures.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # this pytest's, if a worker
    env.update(ARCHDSL_FAIL_LOG_DEMO="1", ARCHDSL_FAIL_LOG=str(log))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers,
                           f"{__file__}::test_fails_on_purpose"], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 1, done.stdout + done.stderr
    text = log.read_text()
    for n in (1, 2):
        assert text.count(f"test_fails_on_purpose[{n}] (call)") == 1, text
        assert f"failure number {n}, on purpose" in text
