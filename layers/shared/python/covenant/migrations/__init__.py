"""Numbered SQL migrations (NNNN_name.sql); applied by covenant.migrate."""
