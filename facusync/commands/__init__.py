"""Subcommands of the `facusync` admin command, one module each."""
