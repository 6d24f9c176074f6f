"""Datasets -> plain numpy arrays (nothing framework-specific)."""

from bnn_bench.data.datasets import DATASETS, Dataset, idx_search_dirs, load_dataset
from bnn_bench.data.idx import read_idx, write_idx

__all__ = ["DATASETS", "Dataset", "idx_search_dirs", "load_dataset", "read_idx", "write_idx"]
