"""Local development tools: the Altinn + Maskinporten simulator and helpers for tests."""
