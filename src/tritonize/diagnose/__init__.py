"""`tritonize diagnose`: one folder with what a person would look at when a deployment
misbehaves, and a summary naming each problem with its section of docs/runbook.md."""

from tritonize.diagnose.problems import KINDS, RUNBOOK, Gap, Problem
from tritonize.diagnose.report import Diagnosis, Options
from tritonize.diagnose.run import diagnose

__all__ = ["KINDS", "RUNBOOK", "Diagnosis", "Gap", "Options", "Problem", "diagnose"]
