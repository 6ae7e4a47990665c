"""The command-line jobs: each stage's settings (a *Config dataclass whose fields feed --help) and its run_* job."""
