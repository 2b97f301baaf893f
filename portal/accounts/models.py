"""No models of its own: users and groups are django.contrib.auth's. The module exists so that Django
sends this app post_migrate (which keeps the role groups in sync; see apps.py)."""
