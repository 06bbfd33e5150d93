"""Engine and session factory from the settings, and the Alembic upgrade."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from jobstore.settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


@lru_cache
def _engine_for(url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    return _engine_for(get_settings().db_url)


def session_factory() -> sessionmaker[Session]:
    return _factory_for(get_settings().db_url)


@lru_cache
def _factory_for(url: str) -> sessionmaker[Session]:
    # one sessionmaker per engine: each sessionmaker() call defines a new Session subclass,
    # and one per request left the garbage collector 60 ms pauses on the polling path
    return sessionmaker(_engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    with session_factory()() as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


def alembic_config(url: str | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url or get_settings().db_url
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply the migrations (the only way the schema is created)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def reset_engines() -> None:
    """Forget cached engines (tests change DATABASE_URL between cases)."""
    for eng in list(_engine_list()):
        eng.dispose()
    _engine_for.cache_clear()
    _factory_for.cache_clear()


def _engine_list() -> list[Engine]:
    try:
        return [get_engine()]
    except Exception:
        return []
