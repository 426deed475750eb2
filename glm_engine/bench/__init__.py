"""``glm-engine bench``: llama-bench-style speed measurements of the engine (and of a transformers baseline).

One module per concern: ``spec`` (test names and parameter lists -> the product of points), ``models`` (what
``--model`` names, loaded through the engine's own loaders), ``workload`` (the ids, positions and masks a test
feeds), ``measure`` (timing one point), ``stats`` and ``roofline`` (the arithmetic), ``device`` (synchronisation,
event timers, peak memory), ``baseline`` (transformers in a separate interpreter), ``runner`` (the whole plan,
progress, tensor-parallel groups), ``rows``, ``report`` and ``plot`` (what comes out), ``environment`` (machine and
versions).
"""
