"""Raw data: loaders and validators for the rating and item files users bring."""
