"""Pure coding rules and their code tables (DOMAIN.md; DESIGN.md §2): no Flask, no SQLAlchemy.

``catalog`` loads and validates the site, drug and ICD-10-CM tables of ``data/*.yaml``.
"""
