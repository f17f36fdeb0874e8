"""Redis online feature/prediction store: latest windows per symbol, versioned keys, TTL.

Importing this package opens no connection; :class:`OnlineFeatureStore` connects on its first command.
"""

from raytrade.store.online import (
    DEFAULT_REDIS_URL,
    FeaturesNotFoundError,
    LatestWindow,
    OnlineFeatureStore,
    StoreUnavailableError,
    bars_fingerprint,
)

__all__ = [
    "DEFAULT_REDIS_URL",
    "FeaturesNotFoundError",
    "LatestWindow",
    "OnlineFeatureStore",
    "StoreUnavailableError",
    "bars_fingerprint",
]
