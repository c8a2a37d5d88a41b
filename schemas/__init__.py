"""Validated data models (pydantic) and Parquet table schemas (pyarrow) shared by every layer."""
