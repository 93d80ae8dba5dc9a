"""The subcommands that compose the library: run a grid then report it (`reproduce`, `demo`). Here, not in
`experiments/` or `reports/`, so those two packages never import each other."""
