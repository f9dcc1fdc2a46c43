"""Where the CA home is and what its ``config.toml`` says."""
