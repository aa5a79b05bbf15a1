"""The math of a spec: parsed once into a typed expression tree, printed per target."""
