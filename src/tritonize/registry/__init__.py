"""MLflow as the model registry: build from `models:/NAME/VERSION` or `models:/NAME@ALIAS`,
log each build as a run, and move an alias once a rollout succeeded.

Needs `pip install 'tritonize[registry]'`; mlflow is imported only when one of these is called.
"""

from tritonize.registry.checkpoint import find_checkpoint
from tritonize.registry.client import ResolvedModel, resolve_model, set_alias, tracking_uri
from tritonize.registry.tracking import experiment_name, flatten_spec, log_build
from tritonize.registry.uri import ModelUri, is_model_uri

__all__ = [
    "ModelUri",
    "ResolvedModel",
    "experiment_name",
    "find_checkpoint",
    "flatten_spec",
    "is_model_uri",
    "log_build",
    "resolve_model",
    "set_alias",
    "tracking_uri",
]
