"""What the admin commands do, one module per operation, side by side: reconcile, verify,
resync, dead letters, status. They take typed arguments and return typed results; the
modules in facusync.commands only parse, call one of them, print and pick the exit code."""
