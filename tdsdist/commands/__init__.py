"""The `tdsdist` subcommands, one module per kind (`tdsdist/cli.py` assembles the group)."""
