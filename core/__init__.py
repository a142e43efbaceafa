"""Project-wide basics that every package may import: error types and messages (`core.errors`).

`core` sits at the bottom of the module graph and imports nothing else of ours."""
