"""The command line: `main.py` dispatches to one module per subcommand; `options.py` holds the
options several subcommands share. Nothing below this package imports it."""
