"""Recipes: loading with positions, validation into a graph, diagnostics, sweep specs."""
