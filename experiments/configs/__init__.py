"""ml_collections configs of the experiments (`--config.key=value` overrides on the command line)."""
