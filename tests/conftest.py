"""Shared test settings: a small thread count keeps the suite steady on a shared 2-core box."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
