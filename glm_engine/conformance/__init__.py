"""Per-backend conformance: every op against the float64 oracle, the capability matrix, per-op perf, tiny-model checks.

``glm-engine conformance --backend NAME`` is the command; ``run_tests``, ``support_matrix``, ``run_perf``,
``run_model_checks`` and ``self_test`` are the same checks as functions (pytest calls them).
"""
