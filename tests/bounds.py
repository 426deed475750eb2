"""The per-backend tests' tolerance: NMSE against a float64 reference, bounded by the conformance table.

A backend's op is held to the bound ``glm-engine conformance`` holds it to (``conformance/thresholds.py``, NMSE
``sum((out - ref)^2) / sum(ref^2)`` as ``conformance.oracle.nmse`` computes it), so a test and the suite cannot
disagree about what "close enough" means. A comparison the table has no row for needs a row there (with its reason
and a measured number), not a number in the test.
"""

from __future__ import annotations

import torch

from glm_engine.conformance.oracle import nmse as suite_nmse
from glm_engine.conformance.thresholds import threshold_for


def nmse(got: torch.Tensor, expected: torch.Tensor) -> float:
    """NMSE of ``got`` against ``expected`` in float64 (NaN when ``got`` holds a NaN, which no bound accepts)."""
    return suite_nmse([got], [expected])


def max_nmse(check: str, dtype: torch.dtype) -> float:
    """The conformance bound for ``check`` (``attention:decode``, ``linear:int4-groupwise``, ``model:logits`` ...)
    computed in ``dtype``."""
    return threshold_for(check, dtype).max_nmse
