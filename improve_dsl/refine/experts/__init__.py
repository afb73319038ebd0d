"""The experts that propose rewrites, by family, and the one table that names them
(``catalog.EXPERTS``)."""

from .catalog import (
    EXPERTS,
    ExpertFactory,
    ExpertKind,
    ExpertSettings,
    default_expert,
    expert_choices,
    experts_help,
    make_expert,
)

__all__ = [
    "EXPERTS",
    "ExpertFactory",
    "ExpertKind",
    "ExpertSettings",
    "default_expert",
    "expert_choices",
    "experts_help",
    "make_expert",
]
