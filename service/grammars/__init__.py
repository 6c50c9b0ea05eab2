"""DSLs: their grammars, how code is parsed with them, and where they come from.

    grammar.py    Grammar, ParseResult: a compiled DSL and what parsing says (valid, tree, where it stops)
    examples.py   NL -> DSL pairs and where they live under data/
    catalog.py    the connector catalog of a catalog DSL (flow), compiled into its grammar
    comparison.py how two programs are compared: the DSL's compare declaration, the canonical form
    bounds.py     the engine's grammar derived from the author's: what can run away bounded
    compile.py    compile for lark and the engine's llguidance
    tenants.py    tenant configuration (private connectors, safety policy), read once
    registry.py   shipped DSLs, tenant variants and uploads; parsing beside the event loop
    sandbox.py    worker processes that compile and parse tenants' grammars, bounded in time and memory
    worker.py     what runs inside such a worker
    uploads.py    POST /dsls: check in the sandbox, register for the owner
"""

from service.grammars.bounds import DecodingLimits, derive
from service.grammars.catalog import Catalog, Operation, Param
from service.grammars.comparison import Comparison, canonical
from service.grammars.compile import check_grammar, compile_grammar
from service.grammars.examples import Example, examples_path, load_examples
from service.grammars.grammar import Grammar, ParseError, ParseResult
from service.grammars.registry import GrammarRegistry, load_grammar_file
from service.grammars.sandbox import GrammarSandbox
from service.grammars.tenants import TenantConfig, TenantConfigs

__all__ = [
    "Catalog",
    "Comparison",
    "DecodingLimits",
    "Example",
    "Grammar",
    "GrammarRegistry",
    "GrammarSandbox",
    "Operation",
    "Param",
    "ParseError",
    "ParseResult",
    "TenantConfig",
    "TenantConfigs",
    "canonical",
    "check_grammar",
    "compile_grammar",
    "derive",
    "examples_path",
    "load_examples",
    "load_grammar_file",
]
