"""Features written once as Ibis expressions: they run on DuckDB (default) and on Spark."""
