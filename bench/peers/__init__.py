"""The peers (MLServer, KServe) the benchmark runs beside v2server: their venvs, launchers and wrappers."""
