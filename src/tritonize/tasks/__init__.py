"""Tasks: one module each, holding its contract (public tensors, response check, golden
comparison, client call) and its build half. Importing this package imports every task module
in it, which registers the task in `TASKS`: adding a task is adding its module."""

import importlib
import pkgutil

from tritonize.tasks.base import (
    TASKS,
    TaskContract,
    TaskContractError,
    register,
    served_task,
    task_named,
)
from tritonize.tasks.tensors import PublicTensor

# Modules of this package that are not tasks.
_FRAMEWORK = {"base", "build", "tensors", "tolerances"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _FRAMEWORK:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "TASKS",
    "PublicTensor",
    "TaskContract",
    "TaskContractError",
    "register",
    "served_task",
    "task_named",
]
