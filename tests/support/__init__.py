"""Helpers shared by the test tiers: one copy of each check, imported where it is needed."""
