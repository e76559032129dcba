"""Checks of every response a load test gets: a bad one counts as a failure, not a success.

The checks belong to the tasks' contracts; load tests and `verify` share them."""

from tritonize.tasks.base import response_problem

__all__ = ["response_problem"]
