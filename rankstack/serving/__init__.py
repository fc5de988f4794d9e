"""The cascade as a service (issue 8): a `Cascade` library object over a run's exported artifacts
(`artifacts`), online features (`features`), pluggable stages (`stages`) and a FastAPI app (`app`)."""
