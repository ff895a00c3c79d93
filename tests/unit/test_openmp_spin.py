"""The short OpenMP spin boneseg sets before torch loads libgomp (docs/demo.md: a CPU shared with other work)."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import boneseg, os; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"


def test_short_spin_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    for given, expected in [
        ({}, "1000 None"),  # spin briefly, then sleep
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE"),  # the user's policy is kept
        ({"GOMP_SPINCOUNT": "50000"}, "50000 None"),
    ]:  # and so is their spin count
        out = subprocess.run(
            [sys.executable, "-c", SHOW], env={**env, **given}, capture_output=True, text=True, check=True
        ).stdout
        assert out.split() == expected.split(), given
