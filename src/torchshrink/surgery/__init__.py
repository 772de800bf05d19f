"""Surgery: ops that return a new model with other shapes or layer types, planned as data.

A plan is a list of typed ops (:class:`~torchshrink.surgery.plan.SurgeryOp`), recorded on
the model as JSON (``model.surgery``), stored in the ``.tsk`` file and replayed on load
from the :data:`~torchshrink.surgery.ops.OPS` registry (never found by an import string).
"""

from .plan import SurgeryOp, apply_plan, parse_plan, replay_plan

__all__ = ["SurgeryOp", "apply_plan", "parse_plan", "replay_plan"]
