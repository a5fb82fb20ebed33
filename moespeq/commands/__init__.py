"""One module per `moespeq` verb: HELP, add_arguments(parser), run(args) -> exit code."""
