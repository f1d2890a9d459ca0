"""Customer histories from the Feast online store, for the recommender.

feast is imported only when :class:`CustomerHistory` is built (in the model's ``load``): its
import takes ~8 s and pulls torch in when torch is installed, so importing ``serving`` stays
cheap and torch-free until a recommender actually loads a feature store.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from serving.errors import ModelLoadError, NotReady

logger = logging.getLogger(__name__)

FEATURE_VIEW = "customer_history"
JOIN_KEY = "customer_id"
FEATURE = "recent_items"


class CustomerHistory:
    """Reads ``customer_history:recent_items`` (stock codes, oldest first) for customer ids.

    Args:
        repo_path: a Feast repo with ``feature_store.yaml`` (the ``feature_store/`` artifact).

    Raises:
        ModelLoadError: the repo does not open, or it lacks the feature view, its join key or
            the feature.
    """

    def __init__(self, repo_path: Path) -> None:
        repo_path = Path(repo_path)
        if not (repo_path / "feature_store.yaml").is_file():
            raise ModelLoadError(f"no feature_store.yaml in the feature repo {repo_path}")
        try:
            from feast import FeatureStore
        except ImportError as exc:
            raise ModelLoadError(f"feast is not installed: {exc}") from exc
        try:
            self._store = FeatureStore(repo_path=str(repo_path))
            view = self._store.get_feature_view(FEATURE_VIEW)
        except Exception as exc:  # feast raises its own *NotFound / config errors
            raise ModelLoadError(
                f"feature repo {repo_path} has no usable feature view {FEATURE_VIEW!r}: {exc}"
            ) from exc
        join_keys = list(view.join_keys)
        if join_keys != [JOIN_KEY]:
            raise ModelLoadError(
                f"feature view {FEATURE_VIEW!r} has join keys {join_keys}, expected [{JOIN_KEY!r}]"
            )
        features = [f.name for f in view.features]
        if FEATURE not in features:
            raise ModelLoadError(
                f"feature view {FEATURE_VIEW!r} has no feature {FEATURE!r} (it has {features})"
            )
        self._ref = f"{FEATURE_VIEW}:{FEATURE}"
        # Requests run in a thread pool and the sqlite online store shares one connection
        # (opened with check_same_thread=False): reads are serialised here, ~20 ms each.
        self._lock = threading.Lock()
        logger.info("feature store %s open, reading %s", repo_path, self._ref)

    def recent_items(self, customer_ids: list[str]) -> list[list[str] | None]:
        """The recent items of each customer, oldest first; ``None`` for an unknown customer.

        Args:
            customer_ids: string customer ids, as on the wire.

        Returns:
            One entry per id, in order: the list of stock codes, or ``None`` when the online
            store holds no row (or an empty one) for that customer.

        Raises:
            NotReady: the online store could not be read.
        """
        if not customer_ids:
            return []
        try:
            with self._lock:
                response = self._store.get_online_features(
                    features=[self._ref],
                    entity_rows=[{JOIN_KEY: cid} for cid in customer_ids],
                ).to_dict()
        except Exception as exc:  # sqlite/redis errors surface as many types
            raise NotReady(f"the online feature store could not be read: {exc}") from exc
        # Feast answers every requested row, with None values for entities it does not know.
        values: list[Any] = response.get(FEATURE, [None] * len(customer_ids))
        out: list[list[str] | None] = []
        for value in values:
            if value is None or len(value) == 0:
                out.append(None)
            else:
                out.append([str(v) for v in value])
        logger.debug(
            "online features for %d customers, %d known", len(out), sum(v is not None for v in out)
        )
        return out
