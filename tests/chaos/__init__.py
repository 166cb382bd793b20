"""The chaos suite: the whole pipeline as real processes, broken on purpose, then checked.

Run it with ``python -m tests.chaos --minutes N [--seed S]`` (``make test-chaos`` runs a short
one). Both daemons run as real processes supervised the way systemd would (restart on failure,
watchdog), against the SQL Server stand-in, a real Redis and a real PostgreSQL of their own,
while a workload and the planners keep changing data and faults are injected at times drawn
from a printed seed. At the end the pipeline drains, reconcile runs, and nothing may be lost.
"""
