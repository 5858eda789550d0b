"""orch: a declarative orchestrator on Ray for the training stack of a RAG system.

The package knows graphs, caching, runs and Ray; it knows nothing about ML. Components live in
the ``components`` package (and third-party packages registered under the ``orch.components``
entry-point group) and talk to the orchestrator only through ``orchestrator.api``.
"""

__version__ = "0.1.0"
