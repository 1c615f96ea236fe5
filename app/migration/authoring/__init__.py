"""Tools for writing revisions: autogenerate hooks, the data-loss lint, the manifest writer.

Never imported at run time: an upgrade does not need them.
"""
