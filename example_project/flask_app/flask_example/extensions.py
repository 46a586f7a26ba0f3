"""The extension object, created without an app (``init_app`` happens in ``create_app``)."""

from __future__ import annotations

from csjd_flask import CSJD

csjd = CSJD()
