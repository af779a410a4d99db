"""Workflow stage entry points: one module per pipeline step (``rules/<step>.smk`` holds its
rules) and one function per rule, named like the rule. Each wires ``storage`` reads, package
computations and ``storage`` writes; no math of its own. Scripts call them through
:func:`interaction_basis.seam.run_stage`, which passes the rule's inputs, outputs, params and
wildcards by parameter name.

A stage module imports only what its rules compute with: the workflow derives each rule's code
inputs from these imports (``planning``), so a module imported here for convenience would rerun
the rule whenever it is edited.
"""
