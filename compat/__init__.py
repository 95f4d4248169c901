"""Drop-in replacements for the documented ``datamint.dataset`` classes, built on datamint-pipes.

Change ``datamint.dataset`` to ``datamint_compat.dataset`` in existing code; nothing else.
"""
