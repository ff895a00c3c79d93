"""`python tests/fault_entry.py ARGS…` = `boneseg ARGS…`, except that rank 1 fails on its 6th sample read
(fault injection for the distributed-failure test; production code has no such hook)."""

import os
import sys

if os.environ.get("RANK") == "1":
    from boneseg.data import dataset
    from boneseg.errors import DataError

    original = dataset.SegDataset.__getitem__
    calls = {"n": 0}

    def flaky(self, key):
        calls["n"] += 1
        if calls["n"] >= 6:
            raise DataError("injected fault on rank 1")
        return original(self, key)

    dataset.SegDataset.__getitem__ = flaky

from boneseg.cli import main  # noqa: E402

main(sys.argv[1:])
