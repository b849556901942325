"""FlexBin's Celery workers: tasks take ids, load from the store, call core, write back.

Never imports FastAPI. `worker.celery_app` is configuration only (the API imports it to
enqueue by name); the task code lives in `worker.tasks` / `worker.jobs`.
"""
