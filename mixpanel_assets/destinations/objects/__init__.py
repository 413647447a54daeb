"""Object stores (local folder, S3, GCS, Azure Blob): one replace protocol, one adapter per store."""
