"""Migrations custom resource: applies the migrations and seed data on deploy."""
