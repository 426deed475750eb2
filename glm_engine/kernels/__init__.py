"""Device kernels written in kernel languages (Triton), used by the backends whose op tables choose them.

Nothing here imports a kernel compiler at module level: each subpackage says whether it can run and why not.
"""
