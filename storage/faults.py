"""Named crash points for the reliability tests and benchmark (``tests/test_reliability.py``).

``UNIADC_CRASH_AT=<point>[:<n>]`` makes the process kill itself with SIGKILL (no cleanup, no ``finally``) the
``n``-th time (default 1) it reaches ``crash_point(<point>)``. Unset, a crash point costs one dictionary lookup.
Points: ``file-written`` (a temporary is complete, not yet renamed), ``group-built`` (a Zarr group is complete
in its temporary folder), ``group-created`` (just renamed into place, no sample yet), ``sample-written`` (a
sample's arrays are written, its row not yet committed), ``part-committed`` (a Parquet part just renamed in),
``dir-partly-uploaded`` (object store: the first file of a folder, e.g. one array of a Zarr group, uploaded and
the rest not).
"""

from __future__ import annotations

import os
import signal

_SEEN: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("UNIADC_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
