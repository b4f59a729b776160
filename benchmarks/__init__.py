"""xgblora's benchmarks and measurement tools, one module each, run from the repository root as
``python -m benchmarks NAME [options]`` (``python -m benchmarks`` lists them). ``benchmarks.lib`` holds what they
share; results that tables are made from are kept as data (JSON) under ``benchmarks/results/``."""
