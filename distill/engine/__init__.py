"""The training engine: trainer, distiller, evaluation, checkpoints, resume.

Import from the modules themselves (``distill.engine.trainer.train``): this
``__init__`` imports nothing, so that the light modules (signals, threads, launch)
load without Accelerate and the trainer.
"""
