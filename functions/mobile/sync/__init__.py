"""Offline sync over the WatermelonDB protocol: GET /sync pulls, POST /sync pushes."""
