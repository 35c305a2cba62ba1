"""What is done to a study on a storage: launch and the budgeted study (service.py), the worker, what a
trial records, status, refine, verify, report and export. Imports spec/ and store/, never cli/ or ops/."""
