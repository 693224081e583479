"""The GraphQL Lambda: the Covenant contract served by ariadne."""
