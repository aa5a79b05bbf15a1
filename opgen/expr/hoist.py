"""Split the math into a per-call scalar prologue and a per-element body.

Uniform subexpressions (parameters and constants only, e.g. ``1 - beta1`` or
``clip_gradient > 0``) and temporaries assigned only uniform values move to the
prologue, so kernels compute them once per call instead of once per element.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from opgen.expr.tree import Assign, Const, Expr, Program, Ref, RefKind, map_children, refs


@dataclass(frozen=True)
class KernelProgram:
    prologue: tuple[Assign, ...]  # scalar statements: uniform temporaries and hoisted values
    body: tuple[Assign, ...]  # element statements
    loads: tuple[str, ...]  # tensors the body reads, in first-read order
    stores: tuple[str, ...]  # tensors the body writes, in first-write order
    finals: tuple[tuple[str, str], ...] = ()  # uniform temporary -> the prologue name of its last value



def hoist(program: Program, versioned_names: frozenset[str] = frozenset()) -> KernelProgram:
    """``versioned_names``: uniform temporaries whose first value also gets a name of its own
    (per-tensor states: their name stays their value before the call)."""
    temps: dict[str, bool] = {}
    for s in program.statements:
        if s.kind is RefKind.TEMP:
            temps[s.target] = temps.get(s.target, True) and s.expr.uniform
    uniform_temps = {name for name, uniform in temps.items() if uniform}

    prologue: list[Assign] = []
    body: list[Assign] = []
    hoisted: dict[Expr, Ref] = {}

    def rewrite(e: Expr, where: Assign) -> Expr:
        if isinstance(e, (Const, Ref)):
            return e
        if e.uniform:
            ref = hoisted.get(e)
            if ref is None:
                ref = Ref(e.vtype, True, str(len([s for s in prologue if s.kind is RefKind.HOISTED])),
                          RefKind.HOISTED)
                hoisted[e] = ref
                prologue.append(Assign(ref.name, RefKind.HOISTED, e, where.source, where.location))
            return ref
        return map_children(e, lambda child: rewrite(child, where))

    # Each assignment of a uniform temporary gets its own name (_2s, _3s... after s), so
    # a body statement reads the value current at its place in the math, not the last one.
    current: dict[str, str] = {}
    assignments: dict[str, int] = {}

    def versioned(e: Expr) -> Expr:
        if isinstance(e, Ref) and e.kind is RefKind.TEMP and e.name in current:
            return replace(e, name=current[e.name])
        return map_children(e, versioned)

    for s in program.statements:
        expr = versioned(s.expr)
        if s.kind is RefKind.TEMP and s.target in uniform_temps:
            count = assignments[s.target] = assignments.get(s.target, 0) + 1
            current[s.target] = s.target if count == 1 and s.target not in versioned_names else f"_{count}{s.target}"
            prologue.append(replace(s, target=current[s.target], expr=expr))
        else:
            body.append(replace(s, expr=rewrite(expr, s)))

    loads: dict[str, None] = {}
    for s in body:
        for r in refs(s.expr):
            if r.kind is RefKind.TENSOR:
                loads[r.name] = None
    return KernelProgram(tuple(prologue), tuple(body), tuple(loads), program.tensors_written(),
                         tuple(current.items()))
