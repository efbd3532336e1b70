"""One module per `revbench` subcommand."""
