"""One torch thread for the tests: on a machine whose cores are busy, threads that wait for
each other make small models many times slower, and the tests need no parallelism."""

import torch


def pytest_configure() -> None:
    torch.set_num_threads(1)
