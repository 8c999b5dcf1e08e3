"""Thread control for the model's float kernels: results that do not depend on the thread count."""

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one intra-op thread. The flows' matrices (a few hundred rows by a few hundred
    columns at most) are far too small to share between threads: with 2 threads on a busy 2-core machine
    a training step took 14x and sampling 256 latents 8x longer than with 1 (OpenMP synchronisation).
    One thread also makes the flows' bytes independent of the caller's thread setting."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
