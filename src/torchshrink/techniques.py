"""The technique registry: the only list of techniques.

A technique is its own file (a pydantic Spec, an ``apply`` and a ``TECHNIQUE`` entry, see
:class:`torchshrink.core.technique.Technique`) plus one line here. The recipe schema and
the stage runner are built from :data:`TECHNIQUES`; a technique defined elsewhere (a
plugin, a test) joins with :func:`register`.
"""

from __future__ import annotations

from .compare import TECHNIQUE as COMPARE
from .core.technique import Technique
from .factorize.svd import TECHNIQUE as SVD
from .policy.stage import TECHNIQUE as POLICY
from .prune.agp import TECHNIQUE as AGP
from .prune.magnitude import TECHNIQUE as MAGNITUDE
from .prune.small_dense import TECHNIQUE as SMALL_DENSE
from .quantize.kmeans import TECHNIQUE as KMEANS
from .quantize.product import TECHNIQUE as PQ
from .quantize.residual import TECHNIQUE as RQ

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    MAGNITUDE, AGP, SMALL_DENSE, KMEANS, PQ, RQ, SVD, COMPARE,
    POLICY,
)}


def register(technique: Technique) -> Technique:
    """Add ``technique`` to :data:`TECHNIQUES` (a name already taken is an error)."""
    if technique.name in TECHNIQUES:
        raise ValueError(f"a technique named {technique.name!r} is already registered")
    TECHNIQUES[technique.name] = technique
    return technique
