"""Training: the loop, its steps, the optimizer, checkpoints, sharding over the device mesh,
preemption, metrics, and the supervision of multi-process runs. (Imports nothing: the
entry points load `supervise` before JAX.)"""
