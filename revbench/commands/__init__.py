"""One module per `revbench` subcommand. Each imports only argparse-level code at import time: the heavy
libraries (torch, transformers, pandas, matplotlib) are imported inside the handler that needs them, so
`revbench --help` answers at once."""

# Exit codes shared by the commands.
OK = 0
FAILED = 1  # the command ran and found a failure: a regression (check), no run finished ok (run)
USAGE = 2  # bad input: a flag, a suite, a records file; nothing was run
MIXED_DEVICES = 3  # check: records from different device kinds, which are never compared
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
