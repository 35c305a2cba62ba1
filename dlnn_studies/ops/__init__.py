"""Processes beside the workers: GPU slot claiming (gpu_slot.py, no torch), the dashboard server and the
gRPC storage proxy server. Imports store/ only; their commands are in cli/ops.py."""
