"""What every step shares: artifact layout, config base, id mapping, splits, privacy records."""
