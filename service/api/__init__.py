"""REST blueprints under /api (thin: parse with schemas, call the service layer, dump)."""
