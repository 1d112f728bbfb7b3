"""Policy as code: CEL rules that gate promotions and guard rollouts.

Compile rules once with :func:`compile_rule` (syntax errors carry their line and column), then
evaluate them against a dict of variables with :func:`evaluate_rules`. Gate policies read
:data:`POLICY_VARIABLES`; when one is written, :func:`check_rule` also refuses rules that can
never yield true or false, read against the variable types of :data:`GATE_SCHEMA`. The
evaluator itself is generic, so rollout guards can use their own variables (``candidate``,
``champion``). See :mod:`controlplane.policy._convert` for how Python values map to CEL types
(numbers are doubles).
"""

from controlplane.policy._check import check_rule
from controlplane.policy._compile import (
    MAX_RULE_DEPTH,
    MAX_RULE_LENGTH,
    POLICY_ELEMENT_FIELDS,
    POLICY_VARIABLES,
    CompiledRule,
    compile_rule,
    compile_rules,
)
from controlplane.policy._convert import to_cel, to_plain
from controlplane.policy._evaluate import Decision, Outcome, RuleResult, evaluate_rules
from controlplane.policy._limits import (
    MAX_EVALUATION_STEPS,
    MAX_ITERATIONS,
    MAX_MACRO_NESTING,
    MAX_VALUE_SIZE,
)
from controlplane.policy._references import Reference
from controlplane.policy._schema import GATE_SCHEMA, METRIC_NAMES

__all__ = [
    "GATE_SCHEMA",
    "MAX_EVALUATION_STEPS",
    "MAX_ITERATIONS",
    "MAX_MACRO_NESTING",
    "MAX_RULE_DEPTH",
    "MAX_RULE_LENGTH",
    "MAX_VALUE_SIZE",
    "METRIC_NAMES",
    "POLICY_ELEMENT_FIELDS",
    "POLICY_VARIABLES",
    "CompiledRule",
    "Decision",
    "Outcome",
    "Reference",
    "RuleResult",
    "check_rule",
    "compile_rule",
    "compile_rules",
    "evaluate_rules",
    "to_cel",
    "to_plain",
]
