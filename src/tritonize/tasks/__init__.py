"""Tasks: one module each, holding its contract (public tensors, response check, golden
comparison, client call). Importing this package registers every task in `TASKS`."""

from tritonize.tasks import classification, embedding, generation
from tritonize.tasks.base import (
    TASKS,
    PublicTensor,
    TaskContract,
    TaskContractError,
    register,
    served_task,
    task_named,
)

__all__ = [
    "TASKS",
    "PublicTensor",
    "TaskContract",
    "TaskContractError",
    "classification",
    "embedding",
    "generation",
    "register",
    "served_task",
    "task_named",
]
