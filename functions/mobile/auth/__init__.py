"""Sign-in, refresh, registration, profile and sign-out against the Cognito user pool."""
