"""Launchers that run a sweep's grid cells elsewhere than in this process: Slurm job arrays through submitit."""
