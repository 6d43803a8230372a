"""One module per CLI command, each with ``register(subparsers)``; see ``rfgraph.cli``."""
