"""Local servers speaking S3 (moto), GCS (gcp-storage-emulator) and Azure Blob (Azurite).

servers.py starts and stops them; fixtures.py exposes them to every test as `moto_server`,
`gcs_server` and `azurite_server`; stores.py wraps each one behind the same small interface so
one destination test can run against all three.
"""
