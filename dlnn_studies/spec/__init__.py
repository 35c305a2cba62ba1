"""Study specs: the TOML schema (schema.py), the search space compiled from it, study names, and the
sampler and pruner registries. Imports store/ (the Optuna adapter) only, never study/, cli/ or ops/."""
