"""A registered model held by a Serve replica: loaded by ``name@alias`` (or a pinned version) from the MLflow
registry, and swapped for the new version when the alias moves or the deployment's ``user_config`` changes.

Swapping never drops a request: the new version is loaded in a worker thread while requests keep using the
old object, then one attribute assignment makes the next request use the new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class ModelSlotConfig(BaseModel):
    """``user_config`` of a model deployment (Forecaster, Agent-*): which registered version to serve.

    Attributes:
        alias: registry alias to follow (default: the one the app was built with, usually ``champion``).
        version: pin this registered version instead of following the alias.
        reload_interval_s: how often (seconds) a replica re-reads the alias and loads the version it now
            points at; 0 disables polling (reload only on a ``user_config`` change).
    """

    model_config = ConfigDict(extra="forbid")

    alias: str | None = None
    version: str | None = None
    reload_interval_s: float = Field(30.0, ge=0)


@dataclass(frozen=True)
class LoadedModel:
    """One loaded registered model version; ``loaded_at`` is ISO-8601 UTC."""

    obj: Any
    name: str
    alias: str | None
    version: str
    run_id: str
    loaded_at: str

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "version": self.version, "run_id": self.run_id,
                "loaded_at": self.loaded_at}


def load_registered(tracking_uri: str, name: str, alias: str | None, version: str | None) -> LoadedModel:
    """``name@alias`` (or ``name`` version ``version``) from the MLflow registry, with its loader.

    Raises:
        ModelNotFoundError: no such model, alias or version.
    """
    from raytrade.tracking import load_model_dir

    obj, resolved, run_id = load_model_dir(name, alias or "", tracking_uri, version=version)
    return LoadedModel(obj, name, None if version else alias, resolved, run_id,
                       datetime.now(UTC).isoformat(timespec="milliseconds"))


class ModelSlot:
    """The model a replica serves; :attr:`current` is the :class:`LoadedModel` to use for the next request.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        name: registered model name.
        alias: alias to follow (``version`` overrides it).
        version: a pinned registered version.
        loader: ``(tracking_uri, name, alias, version) -> LoadedModel`` (the registry by default).

    Raises:
        ModelNotFoundError: the model, alias or version is not in the registry (at construction and on
            :meth:`configure`; a failed background reload keeps the current model and logs why).
    """

    def __init__(self, tracking_uri: str, name: str, alias: str = "champion", version: str | None = None,
                 loader: Callable[..., LoadedModel] = load_registered) -> None:
        self.tracking_uri, self.name, self.default_alias = tracking_uri, name, alias
        self.config = ModelSlotConfig(alias=alias, version=version)
        self._loader = loader
        self.current = loader(tracking_uri, name, alias, version)
        self._checked = time.monotonic()
        self._task: asyncio.Task | None = None
        #: why the last background reload failed (``"<UTC time>: <error>"``; the model kept), None once one succeeds
        self.reload_error: str | None = None

    def configure(self, config: dict[str, Any] | ModelSlotConfig) -> bool:
        """Apply a ``user_config``; loads the configured version now if it differs. Returns True on a swap."""
        cfg = ModelSlotConfig.model_validate(config)
        if cfg.alias is None:
            cfg = cfg.model_copy(update={"alias": self.default_alias})
        self.config = cfg
        target = cfg.version or self._alias_version(cfg.alias)
        if target == self.current.version and (cfg.version is not None or self.current.alias == cfg.alias):
            return False
        self.current = self._loader(self.tracking_uri, self.name, cfg.alias, cfg.version)
        return True

    def _alias_version(self, alias: str) -> str | None:
        from raytrade.tracking import aliased_version

        return aliased_version(self.tracking_uri, self.name, alias)

    def _refresh_now(self) -> None:
        version = self._alias_version(self.config.alias)
        if version is not None and version != self.current.version:
            loaded = self._loader(self.tracking_uri, self.name, self.config.alias, None)
            log.info("%s@%s moved: version %s -> %s", self.name, self.config.alias, self.current.version,
                     loaded.version)
            self.current = loaded

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self._refresh_now)
            self.reload_error = None
        except Exception as exc:  # keep serving the loaded version; the next poll tries again
            self.reload_error = f"{datetime.now(UTC).isoformat(timespec='seconds')}: {str(exc)[:300]}"
            log.warning("reload of %s@%s failed, still serving version %s: %s", self.name, self.config.alias,
                        self.current.version, exc)

    def poll(self) -> None:
        """Call on each request: every ``reload_interval_s`` re-reads the alias in the background (the request
        does not wait) and swaps to the version it points at. No-op for a pinned version."""
        interval = self.config.reload_interval_s
        if self.config.version is not None or interval <= 0 or (self._task is not None and not self._task.done()):
            return
        now = time.monotonic()
        if now - self._checked < interval:
            return
        self._checked = now
        self._task = asyncio.get_running_loop().create_task(self._refresh())
