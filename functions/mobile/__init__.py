"""The mobile contract Lambda: health, Cognito auth and WatermelonDB offline sync."""
