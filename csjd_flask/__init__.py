"""Flask integration for CSJD (coming: see issue 8)."""
