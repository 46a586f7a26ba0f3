"""Django integration for CSJD (coming: see issue 7)."""
