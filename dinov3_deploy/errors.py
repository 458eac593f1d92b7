"""The one exception type a user can cause. Leaf module: every layer may import it."""


class DeployError(Exception):
    """An error with a message that says what went wrong and what to do about it.

    The CLI prints it without a traceback and exits with status 2.
    """


class CheckpointError(DeployError):
    """A checkpoint that cannot be read or does not fit the model (keys, shapes, layout)."""


class InputShapeError(DeployError):
    """An input whose shape breaks a rule (multiple of the patch size, batch range, ...)."""


class MissingDependencyError(DeployError):
    """An optional dependency is not installed; the message names the extra to install."""


class ArtifactError(DeployError):
    """An artifact directory that is incomplete, tampered with, or from another version."""


def require(module: str, extra: str):
    """Import an optional dependency or raise a MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised through callers' tests
        raise MissingDependencyError(
            f"'{module}' is not installed ({exc}). Install it with: pip install 'dinov3-deploy[{extra}]'"
        ) from exc
