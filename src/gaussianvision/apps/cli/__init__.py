"""The `gsv` command line. Every subcommand is a module with main(argv) -> int."""
