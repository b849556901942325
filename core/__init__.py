"""FlexBin core: layer-wise priority binarization of pedestrian detectors.

Importable without FastAPI, Celery or a database. See docs/CONVENTIONS.md.
"""
