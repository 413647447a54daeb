"""Warehouses (DuckDB, BigQuery, Snowflake, Redshift Spectrum): a window or table replaced through a
staging table and one transaction (Spectrum: an object-store export plus Glue tables)."""
