"""Bulk ingestion of OHLCV bars: find data files, read many at once, keep a Hive-partitioned Parquet store.

The store written by :func:`write_partitioned` is one directory per symbol,
``<out_dir>/symbol=<uri-encoded symbol>/part-<ns>-<uuid>.parquet``, the Hive layout that
``pyarrow.dataset`` (``partitioning="hive"``, URI segment encoding) and Ray Data read directly.
The ``symbol`` column lives in the directory name only, so ``"BTC/USD"`` or ``"^DJI"`` round-trip
exactly (``symbol=BTC%2FUSD``, ``symbol=%5EDJI``). Part files sort by name in the order they were written.

Nothing here validates bars; call :func:`raytrade.data.validation.validate_bars` on what :func:`read_many`
returns.
"""

from __future__ import annotations

import glob
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raytrade.data.readers import read_bars
from raytrade.data.schema import BAR_COLUMNS, OHLCV_COLUMNS, SYMBOL, TIMESTAMP
from raytrade.errors import DataValidationError

#: file suffixes :func:`discover` picks up in directories and glob matches (case-insensitive)
DATA_SUFFIXES = (".csv", ".parquet")
#: name of the Hive partition key written by :func:`write_partitioned`
PARTITION_KEY = SYMBOL
_PARTITION_DIR = re.compile(rf"^{PARTITION_KEY}=(.*)$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _is_data_file(path: Path) -> bool:
    # dataset writers/readers ignore names starting with "." or "_" (e.g. _SUCCESS, .part-tmp)
    return path.is_file() and path.suffix.lower() in DATA_SUFFIXES and not path.name.startswith((".", "_"))


def discover(source: str | Path) -> list[Path]:
    """List the data files a source names.

    Args:
        source: one file (returned as is, whatever its suffix: :func:`read_bars` judges the format);
            a directory (every ``*.csv`` / ``*.parquet`` below it, recursively, skipping names that start
            with ``.`` or ``_``); or a glob pattern (``**`` recurses), of which the ``.csv`` / ``.parquet``
            files are kept.

    Returns:
        The files, sorted by path.

    Raises:
        DataValidationError: rule ``file_not_found`` naming ``source`` when it matches no data file.
    """
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _is_data_file(p))
    elif _GLOB_CHARS.search(str(source)):
        files = sorted(p for p in map(Path, glob.glob(str(source), recursive=True)) if _is_data_file(p))
    else:
        files = []
    if not files:
        kind = "directory" if path.is_dir() else "path or pattern"
        raise DataValidationError(
            "file_not_found", f"no .csv or .parquet data file found for {kind} {str(source)!r}"
        )
    return files


def partition_symbol(path: str | Path) -> str | None:
    """The symbol of a file in a Hive partition directory ``symbol=<uri-encoded>/``, else ``None``."""
    match = _PARTITION_DIR.match(Path(path).parent.name)
    return unquote(match.group(1)) if match else None


def _canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    ordered = [c for c in BAR_COLUMNS if c in frame.columns]
    return frame[ordered + [c for c in frame.columns if c not in BAR_COLUMNS]]


def _canonical_dtypes(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Timestamps ``datetime64[ns, UTC]`` whatever the file's unit and UTC tz object (pandas concatenates
    ``ZoneInfo("UTC")`` with ``timezone.utc`` columns to ``object``), integer OHLCV columns as float64, so
    the result's dtypes don't depend on which files were read together."""
    changes: dict[str, pd.Series] = {}
    if TIMESTAMP in frame.columns and isinstance(frame[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        try:
            changes[TIMESTAMP] = frame[TIMESTAMP].dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
        except (OverflowError, pd.errors.OutOfBoundsDatetime) as err:
            raise DataValidationError("timestamp_parse", f"timestamps out of range 1677-2262 in {path}: {err}",
                                      column=TIMESTAMP) from err
    for col in OHLCV_COLUMNS:
        if col in frame.columns and pd.api.types.is_integer_dtype(frame[col].dtype):
            changes[col] = frame[col].astype("float64")
    return frame.assign(**changes) if changes else frame


def read_many(source: str | Path, symbol: str | None = None) -> pd.DataFrame:
    """Read every data file of a source (see :func:`discover`) into one canonical bar table.

    Each file is read with :func:`raytrade.data.readers.read_bars`. The symbol of a file in a Hive
    partition directory ``symbol=<value>/`` is the URL-decoded ``<value>`` (it overrides any symbol
    column); a file without a symbol column outside a partition gets its file stem. Files are
    concatenated in :func:`discover` order and rows keep their order within each file.

    Args:
        source: file, directory or glob pattern.
        symbol: keep only this symbol's bars. When ``source`` is a single file outside a partition
            directory, this is exactly :func:`read_bars`'s ``symbol`` (assigned to a file without a
            symbol column, a filter otherwise).

    Returns:
        DataFrame with the columns of :data:`~raytrade.data.schema.BAR_COLUMNS` first (timestamps
        ``datetime64[ns, UTC]``, integer OHLCV columns as float64), then any extra columns in order of
        first appearance; a fresh ``RangeIndex``. Not validated.

    Raises:
        DataValidationError: ``file_not_found`` (nothing matches), ``file_format`` / ``timestamp_parse``
            (from :func:`read_bars`, or a timestamp outside 1677-2262), ``unknown_symbol`` (``symbol``
            given but in none of the files).
    """
    files = discover(source)
    frames = []
    for path in files:
        part = partition_symbol(path)
        if part is not None:
            frame = read_bars(path)
            frame[SYMBOL] = part
        else:
            frame = read_bars(path, symbol) if len(files) == 1 else read_bars(path)
        if symbol is not None:
            frame = frame[frame[SYMBOL] == symbol]
        frames.append(_canonical_dtypes(frame, path))
    bars = _canonical_order(pd.concat(frames, ignore_index=True)) if len(frames) > 1 else frames[0]
    if symbol is not None and bars.empty:
        raise DataValidationError(
            "unknown_symbol", f"symbol {symbol!r} not found in {len(files)} file(s) of {str(source)!r}",
            column=SYMBOL, symbol=symbol,
        )
    return bars.reset_index(drop=True)


def _partition_dir(out_dir: Path, symbol: str) -> Path:
    return out_dir / f"{PARTITION_KEY}={quote(symbol, safe='')}"


def _part_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if _is_data_file(p))


def write_partitioned(
    bars: pd.DataFrame, out_dir: str | Path, mode: Literal["append", "overwrite"] = "overwrite"
) -> list[Path]:
    """Write bars as Hive-partitioned Parquet, one directory per symbol (see the module docstring).

    Each symbol's rows are written in their order in ``bars`` to one new part file with a unique,
    time-ordered basename; the ``symbol`` column is stored only in the directory name.

    Args:
        bars: canonical bar table (needs ``timestamp`` and ``symbol``; other columns are stored as they are).
        out_dir: root of the store; created if missing.
        mode: ``"append"`` adds new part files and never touches existing ones (the caller avoids
            duplicate bars, e.g. by resuming after :func:`last_timestamps`); ``"overwrite"`` replaces
            the partitions of the symbols present in ``bars`` (their old ``*.parquet`` part files are
            deleted after the new ones are written) and leaves other symbols' partitions alone.

    Returns:
        The part files written, in symbol order of first appearance (none for an empty table).

    Raises:
        DataValidationError: ``missing_columns`` (no ``timestamp``/``symbol`` column) or ``empty_symbol``
            (a missing or empty symbol, which has no partition directory).
        ValueError: ``mode`` is neither ``"append"`` nor ``"overwrite"``.
    """
    if mode not in ("append", "overwrite"):
        raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
    missing = [c for c in (TIMESTAMP, SYMBOL) if c not in bars.columns]
    if missing:
        raise DataValidationError("missing_columns", f"cannot partition bars without {missing}", column=missing[0])
    bad = bars[SYMBOL].isna() | (bars[SYMBOL].astype("string").fillna("") == "")
    if bad.any():
        first = bars.loc[bad, TIMESTAMP].iloc[0]
        raise DataValidationError("empty_symbol", "bars with a missing or empty symbol cannot be partitioned",
                                  column=SYMBOL, timestamp=first, count=int(bad.sum()))
    out_dir = Path(out_dir)
    written: list[Path] = []
    for symbol, group in bars.groupby(SYMBOL, sort=False):
        directory = _partition_dir(out_dir, str(symbol))
        directory.mkdir(parents=True, exist_ok=True)
        old = _part_files(directory) if mode == "overwrite" else []
        target = directory / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        table = pa.Table.from_pandas(group.drop(columns=[SYMBOL]), preserve_index=False)
        tmp = target.with_name("." + target.name)  # hidden until complete, so readers never see half a file
        pq.write_table(table, tmp)
        tmp.replace(target)
        written.append(target)
        for stale in old:
            stale.unlink()
    return written


def _stored_symbols(out_dir: Path) -> Iterable[tuple[str, Path]]:
    if not out_dir.is_dir():
        return
    for directory in sorted(out_dir.iterdir()):
        match = _PARTITION_DIR.match(directory.name)
        if match and directory.is_dir():
            yield unquote(match.group(1)), directory


def last_timestamps(out_dir: str | Path) -> dict[str, pd.Timestamp]:
    """The timestamp of the last stored bar of each symbol in a store written by :func:`write_partitioned`.

    Args:
        out_dir: root of the store (may not exist yet).

    Returns:
        ``{symbol: latest bar-open timestamp (tz-aware UTC)}``; symbols whose partition holds no rows
        are left out, and a missing or empty store gives ``{}``.
    """
    result: dict[str, pd.Timestamp] = {}
    for symbol, directory in _stored_symbols(Path(out_dir)):
        latest = None
        for part in _part_files(directory):
            stamps = pd.to_datetime(pq.read_table(part, columns=[TIMESTAMP]).column(0).to_pandas(), utc=True)
            if stamps.notna().any():
                stamp = stamps.max()
                latest = stamp if latest is None or stamp > latest else latest
        if latest is not None:
            result[symbol] = latest
    return result


def ingest_files(source: str | Path, out_dir: str | Path, policy: Literal["fail", "drop", "repair"] = "fail",
                 symbol: str | None = None) -> dict[str, Any]:
    """Read CSV/Parquet bars (:func:`read_many`), validate them under ``policy`` and write them to the
    partitioned store (:func:`write_partitioned`, overwriting the symbols present).

    ``policy``: ``fail`` stops at the first broken rule and writes nothing; ``drop`` leaves the rows breaking a
    rule out (and counts them); ``repair`` also fills intraday gaps, flagged in a ``repaired`` column.

    Returns:
        ``{"bars", "symbols", "files", "dropped", "inserted", "warnings"}`` (counts; ``files``: part files).

    Raises:
        DataValidationError: a rule is broken under ``fail``, or the source has no bars.
        ValueError: an unknown ``policy``.
    """
    from raytrade.data.validation import apply_policy

    if policy not in ("fail", "drop", "repair"):
        raise ValueError(f"policy must be fail, drop or repair, got {policy!r}")
    bars, report = apply_policy(read_many(source, symbol), policy)
    files = write_partitioned(bars, out_dir)
    return {"bars": len(bars), "symbols": int(bars[SYMBOL].nunique()), "files": [str(f) for f in files],
            "dropped": sum(n for per in report.dropped.values() for n in per.values()),
            "inserted": sum(report.inserted.values()), "warnings": len(report.warnings())}
