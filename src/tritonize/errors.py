"""One exception root. Messages name the field, the value and what is allowed."""


class TritonizeError(Exception):
    """Base of every error tritonize raises on purpose."""


class SpecError(TritonizeError):
    """A build spec field holds a value that is not allowed."""


class ExportError(TritonizeError):
    """The checkpoint could not be loaded or exported to ONNX."""


class EngineError(TritonizeError):
    """An engine could not be built or run, or its runtime is missing."""


class ValidationError(TritonizeError):
    """An exported artefact does not reproduce its reference within tolerance."""

    def __init__(self, what: str, mismatches: list[str]) -> None:
        self.mismatches = mismatches
        listing = "\n".join(f"  - {m}" for m in mismatches)
        super().__init__(f"{what}: {len(mismatches)} mismatch(es)\n{listing}")


class RepositoryError(TritonizeError):
    """A model repository is malformed: a config, a file or the ensemble wiring."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"model repository check failed: {len(problems)} problem(s)\n{listing}")


class ServerError(TritonizeError):
    """The local tritonserver could not be started, or died."""


class InferenceError(TritonizeError):
    """The server rejected a request or could not be reached."""


class RepositoryConflictError(TritonizeError):
    """A build would replace models another ensemble owns, or a version that may be serving."""


class RegistryError(TritonizeError):
    """A model registry (MLflow) URI, model, version or alias is wrong, or its server is down."""
