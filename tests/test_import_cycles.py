"""No module of panelfuse imports itself back at run time (import-linter checks the layers and cycles
between top-level packages; this checks every module). Imports under TYPE_CHECKING are left out: a
strategy that takes the run's context, which holds the plan, which holds the strategy, is a cycle
of types only."""

from __future__ import annotations

import grimp


def runtime_cycles() -> list[tuple[str, str]]:
    graph = grimp.build_graph("panelfuse", exclude_type_checking_imports=True)
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                found.add(tuple(sorted((module, imported))))
    return sorted(found)


def test_no_runtime_import_cycles():
    assert runtime_cycles() == []


def test_the_check_sees_type_only_cycles_when_asked():
    # the same walk with TYPE_CHECKING imports included does find the strategy/context cycle, so an
    # empty list above is a real result, not a graph that saw nothing
    graph = grimp.build_graph("panelfuse", exclude_type_checking_imports=False)
    assert graph.chain_exists(importer="panelfuse.pipeline.context", imported="panelfuse.pipeline.plan")
    assert graph.chain_exists(importer="panelfuse.pipeline.plan", imported="panelfuse.pipeline.context")
