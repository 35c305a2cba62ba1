"""Where things are kept: every address read in one place (urls.py), the Optuna storage with its budget
lock (storage.py), the gRPC storage proxy's client (proxy_client.py), the artifact store, dataset files
by SHA-256, full-disk handling, and optuna_private.py, the only module that imports Optuna's private
names. Imports nothing else of the service."""
