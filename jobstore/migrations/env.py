"""Alembic environment: the URL comes from ``config.attributes['url']`` or the settings."""

from alembic import context

from jobstore.db import make_engine
from jobstore.models import Base
from jobstore.settings import get_settings

config = context.config
target_metadata = Base.metadata
url = config.attributes.get("url") or get_settings().db_url

if context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
