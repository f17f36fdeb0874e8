"""MLflow tracking and model registry: the ONLY module that imports mlflow.

Default store: a local SQLite database ``<output_dir>/mlflow.db`` with artifacts under
``<output_dir>/mlartifacts`` (no server needed). ``$MLFLOW_TRACKING_URI`` (or ``tracking.uri`` in
the config) points it at a tracking server instead.

Models are registered as MLflow *pyfunc* models wrapping a directory (the forecaster bundle, an RL
policy): :func:`log_model_dir` logs and registers it and moves an alias (default ``champion``) to
the new version; :func:`load_model_dir` gets it back by ``name@alias``.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raytrade.errors import ModelNotFoundError, TrackingServerError

MODEL_DIR_KEY = "model_dir"


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's per-call chatter (progress bars, pickling and type-hint notices) for our calls."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def resolve_tracking_uri(uri: str | None, output_dir: str | Path) -> str:
    """Config value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs output_dir>/mlflow.db``. A tracking server
    (``http(s)://``) must answer first (:func:`check_tracking_server`).

    Raises:
        TrackingServerError: the tracking server does not answer (names it).
    """
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        resolved = uri or os.environ["MLFLOW_TRACKING_URI"]
        check_tracking_server(resolved)
        return resolved
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """For an ``http(s)://`` tracking URI, ``GET <uri>/health`` (MLflow's health route) within ``timeout_s``, so a
    stopped server is one clear error before any work, not minutes of MLflow's own retries halfway through a run.
    Other URIs (``sqlite:///``, ``file:``, ``databricks``) are not checked.

    Raises:
        TrackingServerError: no answer, or not 200 (names the URI and what happened).
    """
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        status = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).status_code
    except httpx.HTTPError as exc:
        raise TrackingServerError(f"the MLflow tracking server at {uri} does not answer ({type(exc).__name__}): "
                                  "start it (mlflow server) or set tracking.uri to one that runs") from None
    if status != 200:
        raise TrackingServerError(f"the MLflow tracking server at {uri} answered {status} on /health")


def _artifact_root(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def use_tracking_uri(tracking_uri: str) -> None:
    """Point this process's MLflow client (tracking and registry) at ``tracking_uri``.

    MLflow also exports the URIs as ``$MLFLOW_TRACKING_URI`` / ``$MLFLOW_REGISTRY_URI``; those are put back as they
    were, so a later run in the same process (a notebook, a test session) still resolves its own store
    (:func:`resolve_tracking_uri` reads the variable as the USER's choice)."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def registry_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose tracking AND registry are ``tracking_uri``.

    ``MlflowClient(tracking_uri)`` alone takes its registry from the process-wide registry URI when one was set
    (``mlflow.set_registry_uri``, which :func:`use_tracking_uri` calls), so in a process that used another store
    before (a test session, a notebook) it reads model versions and aliases from THAT store.
    """
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _ensure_experiment(tracking_uri: str, experiment: str) -> str:
    """Id of ``experiment``, created (artifacts next to a SQLite store) when missing."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=_artifact_root(tracking_uri))


@contextmanager
def start_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """Open an MLflow run (creating the experiment if needed); yields the run id."""
    use_tracking_uri(tracking_uri)
    exp_id = _ensure_experiment(tracking_uri, experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
        yield run.info.run_id


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def log_params(params: dict[str, Any]) -> None:
    """Log a nested dict as flat ``a.b.c`` params (values stringified; MLflow's 6000-char limit)."""
    flat: dict[str, Any] = {}
    _flatten("", params, flat)
    mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


def log_artifact_to_run(tracking_uri: str, run_id: str, path: str | Path) -> None:
    """Attach a file to an already finished run."""
    use_tracking_uri(tracking_uri)
    MlflowClient().log_artifact(run_id, str(path))


class DirectoryModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a model saved as a directory and loaded by ``loader`` ("module:function")."""

    def __init__(self, loader: str) -> None:
        self.loader = loader
        self.obj: Any = None

    def load_context(self, context: Any) -> None:
        module, _, attr = self.loader.partition(":")
        self.obj = getattr(importlib.import_module(module), attr)(context.artifacts[MODEL_DIR_KEY])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate against them
        return self.obj.predict(model_input)


def log_model_dir(local_dir: str | Path, loader: str, registered_name: str, alias: str | None) -> str:
    """Log ``local_dir`` in the active run as a pyfunc model, register it and point ``alias`` at it
    (``alias=None``: register only; see :func:`set_alias`).

    Returns:
        The new registered model version (as a string).
    """
    with _quiet_mlflow():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DirectoryModel(loader),
            artifacts={MODEL_DIR_KEY: str(local_dir)},
            pip_requirements=[],  # the serving image is this project; skip slow requirement inference
        )
        version = mlflow.register_model(info.model_uri, registered_name)
    if alias:
        MlflowClient().set_registered_model_alias(registered_name, alias, version.version)
    return str(version.version)


def set_alias(tracking_uri: str, registered_name: str, alias: str, version: str) -> None:
    """Point ``registered_name@alias`` at ``version``."""
    registry_client(tracking_uri).set_registered_model_alias(registered_name, alias, str(version))


def aliased_version(tracking_uri: str, registered_name: str, alias: str) -> str | None:
    """The version ``registered_name@alias`` points at, or None when the model or alias does not exist.

    Raises:
        MlflowException: the registry did not answer (e.g. the tracking server is down): not the same as "no such
            alias", so a serving replica keeps its model and reports the failure instead of taking it for one.
    """
    try:
        return str(registry_client(tracking_uri).get_model_version_by_alias(registered_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:  # no model / no such alias
            return None
        raise


def log_text(text: str, artifact_file: str) -> None:
    """Save ``text`` as an artifact file of the active run (e.g. a markdown table)."""
    with _quiet_mlflow():
        mlflow.log_text(text, artifact_file)


def tune_logger_callback(tracking_uri: str, experiment: str, tags: dict[str, str] | None = None) -> Any:
    """Ray Tune's MLflow integration (``MLflowLoggerCallback``): one MLflow run per trial with its
    config as params and every reported result as metrics."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    use_tracking_uri(tracking_uri)
    _ensure_experiment(tracking_uri, experiment)
    return MLflowLoggerCallback(tracking_uri=tracking_uri, registry_uri=tracking_uri, experiment_name=experiment,
                                tags=tags, save_artifact=False)


def load_model_dir(registered_name: str, alias: str, tracking_uri: str,
                   version: str | None = None) -> tuple[Any, str, str]:
    """Load ``registered_name@alias`` (or the pinned ``version``) with its loader.

    The alias is resolved to a version first and that version is loaded, so a concurrent alias move
    cannot mix two versions.

    Returns:
        ``(loaded object, version, run_id)``.

    Raises:
        ModelNotFoundError: no such model, alias or version in the registry.
    """
    use_tracking_uri(tracking_uri)  # mlflow.pyfunc.load_model below resolves models:/ through the process's registry
    client = registry_client(tracking_uri)
    what = f"{registered_name}/{version}" if version else f"{registered_name}@{alias}"
    try:
        mv = (client.get_model_version(registered_name, str(version)) if version
              else client.get_model_version_by_alias(registered_name, alias))
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"model {what} not found in the MLflow registry at {tracking_uri}: {exc.message}"
        ) from None
    with _quiet_mlflow():
        pyfunc = mlflow.pyfunc.load_model(f"models:/{registered_name}/{mv.version}")
    return pyfunc.unwrap_python_model().obj, str(mv.version), str(mv.run_id)
