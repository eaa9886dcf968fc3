"""Operations: metrics, health checks and the redispatch sweep."""
