"""Service layer of the procedure aggregate (reports, lifecycle, image links and roles)."""
