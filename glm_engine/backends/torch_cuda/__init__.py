"""The shared base of the backends that reach their GPUs through torch's ``torch.cuda`` API: ``cuda`` (NVIDIA) and
``rocm_dcu`` (AMD Instinct, Hygon DCU: a HIP build of torch answers to the same API).

This package is not a backend (the registry does not list it); ``backends/cuda/`` and ``backends/rocm_dcu/`` each
subclass it and import it, and it imports neither of them. What the two share:

- ``backend.py``: :class:`TorchCudaBackend`, the device listing, dtypes, support notes and op-table factory;
- ``ops.py``: :class:`TorchCudaOps`, the op table (fused attention, Triton dequant-GEMM linears) and its decode
  stepper (CUDA graphs);
- ``attention.py``: the attention policy machinery (which path a call takes, and why) and the SDPA path;
- ``graphs.py``: cached decode steps captured as device graphs and replayed (CUDA; HIP graphs when opted in).

What differs per vendor is an override point the subclasses fill in: how a device's architecture is named
(``sm_90`` / ``gfx90a``) and described, the driver and runtime versions, bf16 support, the attention policy
(``TorchCudaOps.default_policy``) and the Triton platform whose launch settings the kernels use
(``TorchCudaOps.platform``). docs/backends.md describes the backends and how to add one.
"""
