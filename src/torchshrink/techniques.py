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
from .factorize.tt import TECHNIQUE as TT
from .policy.channels import TECHNIQUE as AMC
from .policy.stage import TECHNIQUE as POLICY
from .prune.agp import TECHNIQUE as AGP
from .prune.filters import TECHNIQUE as FILTERS
from .prune.magnitude import TECHNIQUE as MAGNITUDE
from .prune.small_dense import TECHNIQUE as SMALL_DENSE
from .quantize.bitwise import TECHNIQUE as BITWISE
from .prune.ssl import TECHNIQUE as SSL
from .quantize.kmeans import TECHNIQUE as KMEANS
from .quantize.product import TECHNIQUE as PQ
from .quantize.qcnn import TECHNIQUE as QCNN
from .quantize.residual import TECHNIQUE as RQ
from .quantize.ternary import TECHNIQUE as TTQ
from .quantize.binary import TECHNIQUE as BINARY

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    MAGNITUDE,
    AGP,
    SMALL_DENSE,
    KMEANS,
    PQ,
    RQ,
    SVD,
    COMPARE,
    BITWISE,
    TT,
    QCNN,
    FILTERS,
    SSL,
    TTQ,
    BINARY,
    POLICY,
    AMC,
)}


def register(technique: Technique) -> Technique:
    """Add ``technique`` to :data:`TECHNIQUES` (a name already taken is an error)."""
    if technique.name in TECHNIQUES:
        raise ValueError(f"a technique named {technique.name!r} is already registered")
    TECHNIQUES[technique.name] = technique
    return technique
