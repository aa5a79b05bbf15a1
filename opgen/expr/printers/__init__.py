"""One printer per target, all reading the same expression tree."""
