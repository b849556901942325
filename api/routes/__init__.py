"""One router per resource; each route validates, calls `api.services`, returns a schema."""
