"""Fixtures shared by several test modules (pytest finds this file by name)."""

from __future__ import annotations

import pytest
import torch

from rankstack.data.dataset import Dataset
from tests._ranking import write_datasets, write_tiny_world


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Dataset]:
    return write_datasets(tmp_path_factory.mktemp("ranking"))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Dataset:
    return write_tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
