"""Tensor parallelism over ``torch.distributed`` (split rules, the communicator, launch). Each backend names its
process-group backend (``Backend.dist_backend``: nccl, hccl, gloo); the rest arrives with multi-GPU support."""
