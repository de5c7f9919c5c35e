"""Subcommands of the `connquota` command, one module each."""
