"""A SQL Server 2016 stand-in for facusync's tests, benchmarks and demo.

It speaks TDS 7.1-7.4 over TCP so the real pymssql/FreeTDS client is what the tests
exercise, and answers T-SQL from an SQLite file (translated with sqlglot). See
``harness.StandIn`` for the API tests use, and ``python -m devstack.standin --help``.
"""
