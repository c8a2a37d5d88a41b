"""Shared fixtures: offline environment, one Prefect test harness per session, tiny datasets on disk."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

MTD_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mtd"


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (entering it costs ~7 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster single-threaded on a shared 2-core machine (no OpenMP spin contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """gpu tests skip without CUDA; mtd tests skip without the dataset; slow tests skip with UNIADC_FAST=1."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if "slow" in item.keywords and os.environ.get("UNIADC_FAST") == "1":
            item.add_marker(pytest.mark.skip(reason="slow test (UNIADC_FAST=1)"))
        if "mtd" in item.keywords and not MTD_ROOT.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"needs the MTD dataset at {MTD_ROOT}"))
