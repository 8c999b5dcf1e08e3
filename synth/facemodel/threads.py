"""Thread control and row blocks for the model's float kernels: results that depend neither on the thread
count nor on the batch a row came in.

A GEMM may round a row differently with another row count or another position in its call (other
kernels, other summation orders). On synth's pinned code path (`synth.cpu`) the kernels were measured
to give a row the same bytes, at any position, in any call whose row count is a multiple of
`PINNED_UNIT`: MKL's COMPATIBLE GEMMs (the flows) in any multiple of 4 rows in float64 and of 4 rows from 8
in float32, OpenBLAS's Sandy Bridge SGEMM (the decoder) in any call of 2 rows or more (Haswell's SGEMM
does not: rows 6-11 of every 12 round otherwise). So a pinned process pads a batch to a multiple of 8
rows and cuts it into calls of at most `BLOCK`: a single sample costs 8 rows. A process off that path
keeps every call at exactly `BLOCK` rows (MKL's own kernels, whose rows are independent of the rest of a
same-size call). tests/facemodel checks both.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from synth import cpu

BLOCK = 128  # the most rows of one GEMM call: amortises the per-call overhead of the flows and decoder
PINNED_UNIT = 8


def pinned_kernels() -> bool:
    """Whether this process runs the pinned kernels whose rows `PINNED_UNIT` calls keep (`synth.cpu`)."""
    return cpu.pinned()


def row_blocks(x: Tensor) -> list[Tensor]:
    """x (B, ...) zero-padded to a multiple of the row unit (`PINNED_UNIT` on the pinned CPU path, else
    `BLOCK`) and cut into calls of at most `BLOCK` rows: the call shapes under which each row's bytes do
    not depend on B."""
    unit = PINNED_UNIT if x.device.type == "cpu" and pinned_kernels() else BLOCK  # GPUs: whole blocks
    pad = (-x.shape[0]) % unit
    padded = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x
    return list(padded.split(BLOCK))


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
