"""Analyses of built models and sources (anthropometry)."""
