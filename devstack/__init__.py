"""The development stack: throwaway PostgreSQL and Redis servers, the SQL Server stand-in, a
test CA, and the facusync daemons as processes, started the same way by the tests, the demo
and the benchmarks.

Not part of the product: facusync/ never imports it and the .deb does not ship it (it has its
own pyproject.toml, installed editable into the venv by `make deps`).
"""
