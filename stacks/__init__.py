"""Infrastructure only: CDK stacks and the constructs they compose."""
