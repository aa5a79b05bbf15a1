"""opgen: optimizer update operators compiled from one YAML spec each.

Layout: ``opgen.spec`` turns YAML into frozen models (the one parse boundary),
``opgen.expr`` holds the math's expression tree and its printers, ``opgen.targets``
translates a model into each output's template context, ``opgen.build`` renders and
writes, and ``opgen.runtime`` is what the generated package imports at run time.
"""

__version__ = "0.1.0"
