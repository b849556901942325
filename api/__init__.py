"""FlexBin's HTTP layer (FastAPI): app factory, routes, schemas, auth. See `api.app`."""
