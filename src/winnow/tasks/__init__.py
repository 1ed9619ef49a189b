"""Built-in tasks (``safety``, ``quality``), built offline from the asset wheels."""

from winnow.tasks.build import DEFAULT_SIZES, TASKS, Sizes, Task, build_task, check_disjoint, length_auroc, summary
from winnow.tasks.export import export_task

__all__ = [
    "DEFAULT_SIZES",
    "TASKS",
    "Sizes",
    "Task",
    "build_task",
    "check_disjoint",
    "export_task",
    "length_auroc",
    "summary",
]
