"""register_features: publish what the shop knows now as a Feast repo, applied and materialized.

Inputs: ``cleaned/`` (sequences, customers, items) and ``training_set/item_features.parquet``.
Output: ``feature_store/``, a complete Feast repo (definitions copied from ``feature_repo/``, its
``feature_store.yaml``, parquet sources and the sqlite or Redis online store filled), that serving
opens with ``FeatureStore(repo_path=feature_store_dir)``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.common import artifacts
from components.common.errors import ConfigError, InputError, RecsynthError
from components.register_features.config import FeaturesConfig

logger = logging.getLogger(__name__)

# The declarative definitions and store configs live at the repository root, beside components/.
FEATURE_REPO = Path(__file__).resolve().parents[2] / "feature_repo"
DEFINITIONS = "features.py"
SETTINGS = "feature_settings.json"
STORE_YAML = "feature_store.yaml"
STORE_TEMPLATES = {"sqlite": "feature_store.yaml", "redis": "feature_store.cluster.yaml"}
REDIS_ENV = "RECSYNTH_REDIS_CONNECTION_STRING"

# Parquet sources, relative to the repo (the paths features.py declares).
DATA = "data"
TABLE_FILES = {
    "customer_history": "customer_history.parquet",
    "item_popularity": "item_popularity.parquet",
    "item_text": "item_text.parquet",
}
ITEM_FEATURE_COLUMNS = ("item_id", "description", "popularity", "price_band", "text_embedding")

# Feature references as serving asks for them ("<feature view>:<feature>").
CUSTOMER_FEATURES = (
    "customer_history:recent_items",
    "customer_history:n_items",
    "customer_history:country",
    "customer_history:last_purchase_at",
    "customer_history:updated_at",
)
FEATURE_SERVICES = ("recommender_v1", "recommender_online_v1")
ITEM_FEATURES = (
    "item_popularity:popularity",
    "item_popularity:price_band",
    "item_text:description",
    "item_text:text_embedding",
)

_TS = pa.timestamp("us", tz="UTC")
SCHEMAS = {
    "customer_history": pa.schema(
        [
            ("customer_id", pa.string()),
            ("recent_items", pa.list_(pa.string())),
            ("n_items", pa.int64()),
            ("country", pa.string()),
            ("last_purchase_at", _TS),
            ("updated_at", _TS),
            ("event_timestamp", _TS),
        ]
    ),
    "item_popularity": pa.schema(
        [
            ("item_id", pa.string()),
            ("popularity", pa.int64()),
            ("price_band", pa.int64()),
            ("event_timestamp", _TS),
        ]
    ),
    "item_text": pa.schema(
        [
            ("item_id", pa.string()),
            ("description", pa.string()),
            ("text_embedding", pa.list_(pa.float32())),
            ("event_timestamp", _TS),
        ]
    ),
}


class FeatureStoreCheckError(RecsynthError):
    """The online store does not serve what register_features wrote into it."""


def run(cfg: FeaturesConfig, cleaned_dir: Path, training_dir: Path, out_dir: Path) -> dict:
    """Build the feature tables, then apply and materialize them as a Feast repo in ``out_dir``.

    Args:
        cfg: the register_features section of the run config.
        cleaned_dir: ingest's ``cleaned/`` (sequences, customers, items).
        training_dir: fuse's ``training_set/`` (item_features.parquet).
        out_dir: the ``feature_store/`` directory to write; replaced only on success.

    Returns:
        Summary: rows per table, apply and materialize seconds, the online read check.

    Raises:
        InputError: an input file or column is missing or holds values outside the contract.
        ConfigError: the feature definitions are missing, or Redis is chosen without its
            connection string.
        FeatureStoreCheckError: values read back online differ from those written.
    """
    timer = artifacts.StepTimer("register_features")
    cleaned_dir, training_dir, out_dir = Path(cleaned_dir), Path(training_dir), Path(out_dir)
    template = _check_setup(cfg)
    # One instant for every row this run stamps, whole seconds: the sqlite online store and
    # Feast's UnixTimestamp values keep seconds only, so what is written is what is read back.
    registered_at = datetime.now(UTC).replace(microsecond=0)

    # read and check every input before anything is written
    tables = build_tables(
        cfg,
        registered_at=registered_at,
        sequences=artifacts.read_parquet(
            cleaned_dir / artifacts.SEQUENCES, artifacts.SEQUENCE_COLUMNS
        ),
        customers=artifacts.read_parquet(
            cleaned_dir / artifacts.CUSTOMERS, artifacts.CUSTOMER_COLUMNS
        ),
        items=artifacts.read_parquet(cleaned_dir / artifacts.ITEMS, ("item_id",)),
        item_features=artifacts.read_parquet(
            training_dir / artifacts.ITEM_FEATURES, ITEM_FEATURE_COLUMNS
        ),
    )
    rows = {name: len(frame) for name, frame in tables.items()}
    logger.info("feature tables built: %s", rows)

    # Feast is imported here, not at module level: it takes ~8 s and pulls in torch.
    from feast import FeatureStore

    # Why apply/materialize may run in atomic_dir's scratch folder: the Feast registry stores
    # each FileSource path exactly as features.py declares it, and features.py declares paths
    # relative to the repo ("data/customer_history.parquet"), which Feast 0.67 resolves against
    # the repo path it is opened with. feature_store.yaml names the registry and the sqlite file
    # relatively too. So nothing written here names the scratch folder, and the rename to out_dir
    # (or any later move of the folder) leaves a consistent repo. _check_relocatable guards this
    # before the rename, and the store is read again at its final path afterwards.
    with artifacts.atomic_dir(out_dir) as repo:
        data_dir = repo / DATA
        data_dir.mkdir()
        for name, frame in tables.items():
            pq.write_table(
                pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False),
                data_dir / TABLE_FILES[name],
            )
        shutil.copyfile(FEATURE_REPO / DEFINITIONS, repo / DEFINITIONS)
        artifacts.write_json(repo / SETTINGS, {"history_ttl_days": cfg.history_ttl_days})
        shutil.copyfile(template, repo / STORE_YAML)

        store = FeatureStore(repo_path=str(repo))
        objects = _load_definitions(repo / DEFINITIONS)

        started = time.perf_counter()
        store.apply(objects)
        apply_s = time.perf_counter() - started

        # The window is the tables' own time span, not "now - TTL": with history_stamp
        # "last_purchase" the 2011 purchases lie years before any run, and an explicit window
        # materializes them whatever the TTL is.
        start, end = _window(tables)
        started = time.perf_counter()
        store.materialize(start_date=start, end_date=end)
        materialize_s = time.perf_counter() - started
        logger.info("applied in %.1f s, materialized in %.1f s", apply_s, materialize_s)

        check = check_online(store, tables, cfg.check_rows)
        _check_relocatable(repo)
        summary = {
            "rows": rows,
            "online_store": cfg.online_store,
            "recent_items": cfg.recent_items,
            "history_ttl_days": cfg.history_ttl_days,
            "history_stamp": cfg.history_stamp,
            "registered_at": registered_at.isoformat(),
            "customers_older_than_ttl": _older_than_ttl(
                tables, cfg.history_ttl_days, registered_at
            ),
            "materialize_window": {"start": start.isoformat(), "end": end.isoformat()},
            "feature_services": list(FEATURE_SERVICES),
            "customer_features": list(CUSTOMER_FEATURES),
            "item_features": list(ITEM_FEATURES),
            "apply_s": round(apply_s, 3),
            "materialize_s": round(materialize_s, 3),
            "online_check": check,
        }
        timer.write(repo, summary)

    # The rename is done; prove the store opens and serves at its final path. If it did not,
    # remove it rather than leave a repo that looks finished.
    try:
        check_online(FeatureStore(repo_path=str(out_dir)), tables, 1)
    except Exception:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return summary


def build_tables(
    cfg: FeaturesConfig,
    *,
    sequences: pd.DataFrame,
    customers: pd.DataFrame,
    items: pd.DataFrame,
    item_features: pd.DataFrame,
    registered_at: datetime | None = None,
) -> dict[str, pd.DataFrame]:
    """Turn the step's inputs into the three feature tables (one row per entity).

    customer_history holds each customer's full real sequence as the shop knows it now (the last
    ``cfg.recent_items`` of it) and their last purchase time. With ``cfg.history_stamp``
    "registered" every row is stamped (event_timestamp and updated_at) with ``registered_at``;
    with "last_purchase" a customer's row is stamped with their last purchase and the item rows
    with the newest purchase in the data, the moment their counts describe.

    Args:
        cfg: the step's settings.
        sequences: cleaned/sequences.parquet.
        customers: cleaned/customers.parquet.
        items: cleaned/items.parquet.
        item_features: training_set/item_features.parquet.
        registered_at: the registration time, UTC-aware; now when not given.

    Raises:
        InputError: naming the file, column and row of the first value outside the contract.
    """
    seq_file, cust_file = artifacts.SEQUENCES, artifacts.CUSTOMERS
    _check_ids(sequences, "customer_id", seq_file)
    _check_ids(customers, "customer_id", cust_file)
    _check_ids(items, "item_id", artifacts.ITEMS)
    _check_ids(item_features, "item_id", artifacts.ITEM_FEATURES)
    last_ts = _utc(customers["last_ts"], cust_file, "last_ts")

    if sequences.empty:
        raise InputError("no customer sequences to register", file=seq_file, column="items")

    # customer_history: the last N distinct items, oldest first
    by_customer = pd.Series(np.arange(len(customers)), index=customers["customer_id"].to_numpy())
    recent, n_items, country, stamp = [], [], [], []
    for row, (customer_id, seq) in enumerate(
        zip(sequences["customer_id"], sequences["items"], strict=True)
    ):
        if customer_id not in by_customer.index:
            raise InputError(
                f"customer {customer_id!r} has a sequence but no row in {cust_file}",
                file=seq_file,
                column="customer_id",
                row=row,
            )
        seq = [] if seq is None else list(seq)
        if not seq or not all(isinstance(i, str) and i for i in seq):
            raise InputError(
                "items must be a non-empty list of stock code strings",
                file=seq_file,
                column="items",
                row=row,
            )
        at = by_customer[customer_id]
        recent.append(seq[-cfg.recent_items :])
        n_items.append(len(seq))
        country.append(customers["country"].iloc[at])
        stamp.append(last_ts.iloc[at])
    last_purchase = pd.DatetimeIndex(stamp).tz_convert("UTC")
    registered = _registration_time(registered_at)
    if cfg.history_stamp == "registered":
        history_stamps = pd.DatetimeIndex([registered] * len(last_purchase))
    else:
        history_stamps = last_purchase
    history = pd.DataFrame(
        {
            "customer_id": sequences["customer_id"].to_numpy(),
            "recent_items": recent,
            "n_items": np.asarray(n_items, dtype=np.int64),
            "country": country,
            "last_purchase_at": last_purchase,
            "updated_at": history_stamps,
            "event_timestamp": history_stamps,
        }
    )

    # item tables: every item must be in the cleaned catalogue
    feat_file = artifacts.ITEM_FEATURES
    unknown = ~item_features["item_id"].isin(set(items["item_id"]))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise InputError(
            f"item {item_features['item_id'].iloc[row]!r} is not in {artifacts.ITEMS}",
            file=feat_file,
            column="item_id",
            row=row,
        )
    popularity = _int_column(item_features, "popularity", feat_file, minimum=0)
    price_band = _int_column(item_features, "price_band", feat_file, minimum=0)
    descriptions = item_features["description"]
    bad = ~descriptions.map(lambda d: isinstance(d, str))
    if bad.any():
        raise InputError(
            "description must be a string",
            file=feat_file,
            column="description",
            row=int(np.flatnonzero(bad.to_numpy())[0]),
        )
    embeddings = _embeddings(item_features["text_embedding"], feat_file)
    snapshot = registered if cfg.history_stamp == "registered" else pd.Timestamp(last_ts.max())
    stamps = pd.DatetimeIndex([snapshot] * len(item_features))
    item_ids = item_features["item_id"].to_numpy()
    return {
        "customer_history": history,
        "item_popularity": pd.DataFrame(
            {
                "item_id": item_ids,
                "popularity": popularity,
                "price_band": price_band,
                "event_timestamp": stamps,
            }
        ),
        "item_text": pd.DataFrame(
            {
                "item_id": item_ids,
                "description": descriptions.to_numpy(),
                "text_embedding": embeddings,
                "event_timestamp": stamps,
            }
        ),
    }


def check_online(store: Any, tables: dict[str, pd.DataFrame], n: int) -> dict:
    """Read up to ``n`` customers and ``n`` items back online and compare with the tables.

    The rows are spread evenly over each table so short and long histories are both read.

    Raises:
        FeatureStoreCheckError: naming the entity and feature that differ (never the values).
    """
    started = time.perf_counter()
    history = tables["customer_history"]
    picked = history.iloc[_spread(len(history), n)]
    got = store.get_online_features(
        features=list(CUSTOMER_FEATURES),
        entity_rows=[{"customer_id": c} for c in picked["customer_id"]],
    ).to_dict()
    for i, want in enumerate(picked.itertuples(index=False)):
        _expect(got["recent_items"][i] == list(want.recent_items), want.customer_id, "recent_items")
        _expect(got["n_items"][i] == want.n_items, want.customer_id, "n_items")
        _expect(got["country"][i] == want.country, want.customer_id, "country")
        for name in ("last_purchase_at", "updated_at"):
            # Feast keeps whole seconds of a UnixTimestamp feature.
            written = pd.Timestamp(getattr(want, name)).floor("s")
            read = got[name][i]
            _expect(read is not None and pd.Timestamp(read) == written, want.customer_id, name)

    popularity, text = tables["item_popularity"], tables["item_text"]
    at = _spread(len(popularity), n)
    got = store.get_online_features(
        features=list(ITEM_FEATURES),
        entity_rows=[{"item_id": i} for i in popularity["item_id"].iloc[at]],
    ).to_dict()
    for i, row in enumerate(at):
        item_id = popularity["item_id"].iloc[row]
        _expect(got["popularity"][i] == popularity["popularity"].iloc[row], item_id, "popularity")
        _expect(got["price_band"][i] == popularity["price_band"].iloc[row], item_id, "price_band")
        _expect(got["description"][i] == text["description"].iloc[row], item_id, "description")
        vector = got["text_embedding"][i]
        same = vector is not None and np.array_equal(
            np.asarray(vector, dtype=np.float32), text["text_embedding"].iloc[row]
        )
        _expect(same, item_id, "text_embedding")
    return {
        "customers": len(picked),
        "items": len(at),
        "matched": True,
        "read_s": round(time.perf_counter() - started, 3),
    }


def _check_setup(cfg: FeaturesConfig) -> Path:
    """Check the definitions and the chosen store config exist; return the store config."""
    template = FEATURE_REPO / STORE_TEMPLATES[cfg.online_store]
    for path in (FEATURE_REPO / DEFINITIONS, template):
        if not path.is_file():
            raise ConfigError(
                f"feature definitions file {path} is missing: register_features needs the "
                "repository's feature_repo/ folder beside components/"
            )
    if cfg.online_store == "redis" and not os.environ.get(REDIS_ENV):
        raise ConfigError(
            f"online_store=redis needs the Redis connection string in ${REDIS_ENV} "
            "(e.g. 127.0.0.1:6379); it is unset or empty"
        )
    return template


def _load_definitions(path: Path) -> list[Any]:
    """Execute the copied definitions file and collect its Feast objects, as `feast apply` would.

    The file is compiled and run in a fresh module object rather than imported, so it leaves no
    __pycache__ in the repo and no entry in sys.modules shared between runs.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    module = types.ModuleType("recsynth_feature_definitions")
    module.__file__ = str(path)
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)  # noqa: S102
    kinds = (Entity, DataSource, FeatureView, FeatureService)
    objects: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, kinds) and not any(value is o for o in objects):
            objects.append(value)
    return objects


def _check_relocatable(repo: Path) -> None:
    """Fail if Feast wrote the scratch folder's absolute path into the registry."""
    registry = (repo / DATA / "registry.db").read_bytes()
    if str(repo.resolve()).encode() in registry or str(repo).encode() in registry:
        raise FeatureStoreCheckError(
            "the Feast registry names the build folder's absolute path, so the repo would break "
            "when renamed into place; feature sources must be declared relative to the repo"
        )


def _window(tables: dict[str, pd.DataFrame]) -> tuple[datetime, datetime]:
    """The materialize window: every event timestamp in the tables, with a second each side."""
    stamps = pd.concat([t["event_timestamp"] for t in tables.values()])
    one = timedelta(seconds=1)
    return stamps.min().to_pydatetime() - one, stamps.max().to_pydatetime() + one


def _older_than_ttl(tables: dict[str, pd.DataFrame], ttl_days: int, registered_at: datetime) -> int:
    """Customers whose row is older than the TTL at registration: serving treats them as missing."""
    cutoff = pd.Timestamp(registered_at) - pd.Timedelta(days=ttl_days)
    stale = int((tables["customer_history"]["event_timestamp"] < cutoff).sum())
    if stale:
        logger.warning(
            "%d of %d customer histories are stamped more than history_ttl_days=%d ago: serving "
            "treats them as missing (history_stamp 'registered' stamps them at registration)",
            stale,
            len(tables["customer_history"]),
            ttl_days,
        )
    return stale


def _registration_time(registered_at: datetime | None) -> pd.Timestamp:
    """``registered_at`` (now when None) as a UTC pd.Timestamp; naive values are refused."""
    if registered_at is None:
        registered_at = datetime.now(UTC).replace(microsecond=0)
    if registered_at.tzinfo is None or registered_at.utcoffset() is None:
        raise InputError(
            f"registered_at must be timezone-aware (UTC); got the naive {registered_at!r}",
            column="registered_at",
        )
    return pd.Timestamp(registered_at).tz_convert("UTC")


def _spread(size: int, n: int) -> list[int]:
    """Up to ``n`` distinct row positions spread evenly over ``size`` rows."""
    return sorted({int(i) for i in np.linspace(0, size - 1, num=min(n, size))})


def _expect(ok: bool, entity: str, feature: str) -> None:
    if not ok:
        raise FeatureStoreCheckError(
            f"online store returned a different {feature!r} for {entity!r} than was written"
        )


def _check_ids(frame: pd.DataFrame, column: str, file: str) -> None:
    """Ids are non-empty strings, one row each."""
    values = frame[column]
    bad = ~values.map(lambda v: isinstance(v, str) and v != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"ids must be non-empty strings; got {values.iloc[row]!r}",
            file=file,
            column=column,
            row=row,
        )
    dup = values.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            f"id {values.iloc[row]!r} appears more than once; one row per id is allowed",
            file=file,
            column=column,
            row=row,
        )


def _utc(values: pd.Series, file: str, column: str) -> pd.Series:
    """UTC-aware timestamps; naive ones are refused, as the machine's timezone would shift them."""
    if not isinstance(values.dtype, pd.DatetimeTZDtype):
        raise InputError(
            f"timestamps must be timezone-aware (UTC); got dtype {values.dtype}",
            file=file,
            column=column,
        )
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise InputError("timestamp is missing", file=file, column=column, row=row)
    return values.dt.tz_convert("UTC").reset_index(drop=True)


def _int_column(frame: pd.DataFrame, column: str, file: str, *, minimum: int) -> np.ndarray:
    """An integer column with no missing values and every value >= ``minimum``."""
    values = frame[column]
    if not pd.api.types.is_integer_dtype(values.dtype):
        raise InputError(
            f"must be int64 with no missing values; got dtype {values.dtype}",
            file=file,
            column=column,
        )
    low = values < minimum
    if low.any():
        row = int(np.flatnonzero(low.to_numpy())[0])
        raise InputError(
            f"value {values.iloc[row]} is below the allowed minimum {minimum}",
            file=file,
            column=column,
            row=row,
        )
    return values.to_numpy(dtype=np.int64)


def _embeddings(values: pd.Series, file: str) -> list[np.ndarray]:
    """Float32 vectors of one common, non-zero length with finite entries."""
    vectors: list[np.ndarray] = []
    dim = None
    for row, value in enumerate(values):
        vector = None if value is None else np.asarray(value, dtype=np.float32)
        ok = vector is not None and vector.ndim == 1 and vector.size > 0
        ok = ok and (dim is None or vector.size == dim) and bool(np.isfinite(vector).all())
        if not ok:
            size = None if vector is None else vector.size
            raise InputError(
                f"text_embedding must be finite float32 vectors of one length "
                f"({dim or 'the first row'}); got length {size}",
                file=file,
                column="text_embedding",
                row=row,
            )
        dim = vector.size
        vectors.append(vector)
    return vectors
