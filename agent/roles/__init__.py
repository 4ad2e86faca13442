"""The roles: pure functions from settings to a desired Spec, and the steps around them."""
