"""Security: payload encryption, key rings, API keys, data-key rotation."""
