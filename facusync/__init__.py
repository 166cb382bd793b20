"""facusync: keep a PostgreSQL copy of a SQL Server view current through a Redis stream."""

__version__ = "0.2.0"
