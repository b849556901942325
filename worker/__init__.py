"""FlexBin's Celery workers: tasks take ids, load from the store, call core, write back.

Never imports FastAPI. `worker.celery_app` is the worker's app (`service.queue.make_celery` with
the task modules); the API sends through the same queue contract, `service.queue`, and never
imports this package. The task code lives in `worker.tasks` / `worker.jobs`.
"""
