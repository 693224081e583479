"""The mobile contract Lambda: health (auth and offline sync join it in later issues)."""
