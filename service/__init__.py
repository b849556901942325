"""FlexBin's service plumbing, shared by the API and the workers (and nothing of the ML library).

- `service.settings`: the environment's configuration (one pydantic-settings object);
- `service.store`: PostgreSQL/SQLite through SQLAlchemy: the tables, the job lifecycle, blobs,
  the catalog of models and datasets, deployments, tenants;
- `service.queue`: the Celery contract between the API and the workers (task names, the queue);
- `service.demo`: what `make run` binarizes on an empty database.

It imports `core` (the ML library) and nothing above it: not `api`, `worker` or `bench`.
"""
