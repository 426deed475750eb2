"""``glm-engine bench``: llama-bench-style speed measurements of the engine (and of a transformers baseline).

One module per concern: ``spec`` (test names and parameter lists -> the product of points), ``models`` (what
``--model`` names, loaded through the engine's own loaders), ``workload`` (the ids, positions and masks a test
feeds), ``measure`` (timing one point), ``stats`` and ``roofline`` (the arithmetic), ``device`` (synchronisation,
event timers, peak memory), ``baseline`` (transformers in a separate interpreter), ``runner`` (the whole plan,
progress, tensor-parallel groups), ``rows``, ``report`` and ``plot`` (what comes out), ``environment`` (machine and
versions). Two measurements a bench row cannot hold have their own module, for the scripts in ``benchmarks/``:
``footprint`` (peak host memory of loading, converting or exporting a checkpoint, each in a fresh interpreter) and
``dequant_gemm`` (the Triton dequant-GEMM kernels alone: checks at the real tiles, speed next to the fp16 GEMM).
"""
