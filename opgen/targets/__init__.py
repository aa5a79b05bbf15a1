"""Pure translations from an OpSpec to each output's template context (as torchgen/api)."""
