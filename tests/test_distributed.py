"""distill.distributed without a process group: every helper returns its input unchanged.

The multi-process behaviour is exercised under torchrun by the contrastive, segmental
and signal tests (tests/test_contrastive_end_to_end.py, test_losses_segmental.py,
test_signals_distributed.py).
"""

import torch

from distill import distributed


def test_one_process_is_rank_zero_of_one():
    assert (distributed.rank(), distributed.world_size()) == (0, 1)


def test_gather_and_reduce_return_their_input_with_one_process():
    rows = torch.arange(6.0).reshape(3, 2)
    assert distributed.all_gather_rows(rows) is rows
    flags = torch.tensor([0.0, 1.0, 0.0])
    assert distributed.all_reduce_(flags, op="max") is flags and flags.tolist() == [0.0, 1.0, 0.0]
    assert distributed.all_reduce_(rows) is rows and rows.sum().item() == 15.0
