"""The recipe: its schema, its checks, and reading, overriding and saving it."""
