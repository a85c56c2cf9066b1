"""Reporting: plots (PNG) and the markdown report of a profile.

What may import it: only orchestration (``tasks``, ``flows``) and the CLI. It may
import every other subpackage of the core.
"""
