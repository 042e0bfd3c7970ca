"""Files every layer reads or writes: a run directory's layout, atomic writes, checksums.

Imports only the standard library and :mod:`distill.errors`, so that reports, sweeps,
the teacher manifest and the trainer all read the same definitions without climbing
above their own layer.
"""
