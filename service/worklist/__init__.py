"""Modality Worklist (PS3.4 Annex K): the C-FIND matching engine for scheduled procedure steps."""
