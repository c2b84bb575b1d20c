"""Where a study lives: storage URLs, opening and creating studies, and the checks that keep one
study about one model.

A study is identified by ``(storage URL, study name)``. The default storage is a SQLite file in
the run folder (``sqlite:///RUN/study.db``); any SQLAlchemy URL Optuna's ``RDBStorage`` accepts
works too, e.g. ``postgresql+psycopg://user@host/db`` for several machines sharing one study.

Storages are opened with heartbeats, so a trial whose process was killed (``kill -9``, a lost
machine) is marked failed after :data:`GRACE_PERIOD` seconds and its slot is run again.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import optuna
from optuna.exceptions import DuplicatedStudyError
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from fqopt._version import __version__
from fqopt.errors import UserError

#: objectives of every fqopt study, in order
METRIC_NAMES = ("avg_acc", "worst_acc", "avg_bits")
DIRECTIONS = ("maximize", "maximize", "minimize")

#: study user attributes written by fqopt (prefix keeps them apart from the user's own)
ATTR_IDENTITY = "fqopt:identity"
ATTR_SETTINGS = "fqopt:settings"
ATTR_READY = "fqopt:ready"
ATTR_VERSION = "fqopt:version"

#: seconds between heartbeats of a running trial, and silence after which it counts as dead
HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 20
#: how long a second worker waits for the first one to finish setting a new study up
SETUP_WAIT = 60.0


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental features fqopt relies on
    (heartbeats, metric names, constraints); a caller with its own progress display (the CLI)
    silences both."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage_url(run_dir) -> str:
    """``sqlite:///<absolute run folder>/study.db``."""
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


#: query parameters of a storage URL that carry a secret (libpq's ``password``, ``sslpassword``,
#: and the usual token names), matched case-insensitively
SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "pass", "sslpassword", "secret", "token",
                     "access_token", "api_key", "apikey", "auth", "sslkey_password")
_USERINFO = re.compile(r"(://[^/?#@:]*:)([^/?#@]*)(@)")
_QUERY_SECRET = re.compile(r"([?&;](?:%s)=)([^&;#]*)" % "|".join(SECRET_QUERY_KEYS), re.I)


def url_secrets(url: str) -> list[str]:
    """The secret values a storage URL holds (its password and secret query parameters)."""
    text = str(url)
    found = [m.group(2) for m in _USERINFO.finditer(text)]
    found += [m.group(2) for m in _QUERY_SECRET.finditer(text)]
    values = set()
    for v in found:
        if v:
            values.update({v, unquote(v)})
    return sorted(values, key=len, reverse=True)


def masked_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and reports): both the
    ``user:password@host`` form and secret query parameters (``?password=...``)."""
    text = str(url)
    text = _USERINFO.sub(lambda m: m.group(1) + "***" + m.group(3), text)
    return _QUERY_SECRET.sub(lambda m: m.group(1) + "***", text)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) with every secret of ``url`` replaced by ``***``: drivers
    may echo the DSN they were given."""
    text = str(text).replace(str(url), masked_url(url))
    for secret in url_secrets(url):
        if len(secret) >= 3:  # a one-letter password would mask half the message
            text = text.replace(secret, "***")
    return text


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # several processes on one file: wait for the write lock instead of failing at once
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def open_storage(url: str, *, heartbeat: bool = True):
    """An Optuna ``RDBStorage`` for ``url``; any failure to reach or read it is a UserError."""
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"storage {url!r} is not a database URL; expected e.g. "
                        "sqlite:///runs/demo/study.db or postgresql+psycopg://user@host/db")
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise UserError(f"storage {masked_url(url)}: folder {folder} does not exist")
    kwargs = dict(engine_kwargs=_engine_kwargs(url))
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD)
    try:
        if url.startswith("sqlite:///"):
            _sqlite_wal(Path(url[len("sqlite:///"):]))
        storage = _create_rdb(url, kwargs)
        if url.startswith("sqlite"):
            _sqlite_fast_commits(storage)
        return storage
    except ImportError as exc:
        raise UserError(f"storage {masked_url(url)}: its database driver is not installed "
                        f"({scrub(_first_line(exc), url)}); for PostgreSQL install "
                        "fqopt[postgres]") from None
    except Exception as exc:  # sqlalchemy errors: bad URL, unreachable host, refused login
        raise UserError(f"cannot open Optuna storage {masked_url(url)}: "
                        f"{type(exc).__name__}: {scrub(_first_line(exc), url)}") from None


def _create_rdb(url: str, kwargs: dict, attempts: int = 6):
    """``RDBStorage(url)``. Workers started together on an empty database all create Optuna's
    tables at once; on PostgreSQL the losers fail with a duplicate-key or duplicate-table error,
    on SQLite with "table ... already exists". Those are retried (the tables exist by then); any
    other error is raised at once."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError) as exc:
            if attempt == attempts - 1 or (isinstance(exc, sa_exc.OperationalError)
                                           and "already exists" not in str(exc)):
                raise
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))


def _sqlite_wal(path: Path) -> None:
    """Write-ahead logging for a study file: several processes read while one writes, and a
    commit is an append, not a rewrite (WAL mode is stored in the file; it is not for network
    file systems)."""
    con = sqlite3.connect(str(path), timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _sqlite_fast_commits(storage) -> None:
    """``synchronous=NORMAL`` on every connection: in WAL mode a commit survives a killed
    process (only a power cut may lose the last ones) and costs no fsync. A trial makes about
    twenty small commits; on a slow disk, fsyncs would cost more than the trial's solve."""
    def on_connect(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener are dropped


def _directions_text(directions) -> str:
    names = [d.name.lower() if hasattr(d, "name") else str(d) for d in directions]
    return "[" + ", ".join(names) + "]"


def _wait_for_attr(storage, study_id: int, key: str, timeout: float) -> dict:
    """Poll the study's user attributes until ``key`` appears (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while True:
        attrs = storage.get_study_user_attrs(study_id)
        if key in attrs or time.monotonic() >= deadline:
            return attrs
        time.sleep(0.5)


def open_study(storage, study_name: str, *, sampler, identity: dict, settings: dict,
               force: bool = False, setup: Callable[[object], None] | None = None,
               describe: str = "this run") -> tuple[object, bool]:
    """Create the study, or load it when it exists; returns ``(study, created)``.

    The process whose ``create`` succeeds (the storage makes that atomic) owns the set-up: it
    records ``identity`` (model, dataset, checkpoint) and ``settings``, calls ``setup(study)``
    (enqueues the seed trials) and then marks the study ready. A process that finds the study
    waits until it is ready and checks that its directions and identity match this run.

    Raises UserError for other directions (naming both), another model or another granularity.
    """
    url = getattr(storage, "url", "?")
    if force:
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                    directions=list(DIRECTIONS))
        created = True
    except DuplicatedStudyError:
        created = False
    except Exception as exc:
        raise UserError(f"cannot create study {study_name!r} in {masked_url(url)}: "
                        f"{type(exc).__name__}: {scrub(_first_line(exc), url)}") from None

    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRIC_NAMES))
        study.set_user_attr(ATTR_IDENTITY, identity)
        study.set_user_attr(ATTR_SETTINGS, settings)
        study.set_user_attr(ATTR_VERSION, __version__)
        if setup is not None:
            setup(study)
        study.set_user_attr(ATTR_READY, True)
        return study, True

    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    check_directions(study, study_name)
    study_id = study._study_id  # noqa: SLF001 - the storage API is keyed by it
    attrs = _wait_for_attr(storage, study_id, ATTR_READY, SETUP_WAIT)
    check_identity(attrs, identity, settings, study_name, describe)
    return study, False


def check_directions(study, study_name: str) -> None:
    ours = list(DIRECTIONS)
    theirs = [d.name.lower() for d in study.directions]
    if theirs != ours:
        names = study.metric_names
        named = (f" ({', '.join(names)})" if names else "")
        raise UserError(f"study {study_name!r} exists with directions {_directions_text(theirs)}"
                        f"{named}, but fqopt search needs {_directions_text(ours)} "
                        f"({', '.join(METRIC_NAMES)}); choose another --study or pass --force "
                        "to replace it")


def check_identity(attrs: dict, identity: dict, settings: dict, study_name: str,
                   describe: str) -> None:
    """The study must be about the same model, dataset, checkpoint and granularity.

    The messages name ``fqopt search --force`` in full: ``show`` and ``report`` raise them too,
    and their own ``--force`` does not start a search over."""
    run_dir = describe[len("run "):] if describe.startswith("run ") else None
    restart = (f"run `fqopt search --run {run_dir} --force` to start the search over"
               if run_dir else "run `fqopt search --force` to start the search over")
    theirs = attrs.get(ATTR_IDENTITY)
    if theirs is None:
        raise UserError(f"study {study_name!r} was not created by fqopt search (it has no "
                        f"{ATTR_IDENTITY!r} attribute); choose another --study, or {restart}")
    for key, what in (("model", "model"), ("dataset", "dataset"),
                      ("num_classes", "number of classes"), ("image_size", "image size")):
        if theirs.get(key) != identity.get(key):
            raise UserError(f"study {study_name!r} belongs to a run with {what} "
                            f"{theirs.get(key)!r}, but {describe} has {identity.get(key)!r}; "
                            f"use another --study (or --run), or {restart}")
    if theirs.get("checkpoint") != identity.get("checkpoint"):
        raise UserError(f"study {study_name!r} was searched with other trained weights "
                        f"(model.pt sha256 {str(theirs.get('checkpoint'))[:12]}…, {describe} has "
                        f"{str(identity.get('checkpoint'))[:12]}…): after retraining the run "
                        f"(`fqopt train --force`), {restart}; a worker on another machine must "
                        "use a copy of the same run folder")
    ours_s = dict(settings)
    theirs_s = attrs.get(ATTR_SETTINGS) or {}
    for key in ("granularity", "direct", "space"):
        if key in theirs_s and key in ours_s and theirs_s[key] != ours_s[key]:
            raise UserError(f"study {study_name!r} searches with {key} {theirs_s.get(key)!r}, "
                            f"but this search asks for {ours_s.get(key)!r}; resume it with the "
                            f"same settings, use another --study, or {restart}")
