//! The capture filter: a tcpdump-style expression (docs/filter.md) parsed into an [`Expr`],
//! compiled into the DNF [`FilterProgram`] the eBPF probes evaluate
//! ([`trace_common::filter::matches`]). [`Expr::matches`] evaluates the tree directly; the tests
//! check that both agree.
//!
//! Entry point for the collector: [`compile`] (string → program), before anything is loaded.

mod ast;
mod compile;
mod eval;
mod lex;
mod parse;
mod values;

pub use ast::{Dir, Expr, Net, Prim};
pub use compile::{compile_expr, WORK_LIMIT};
pub use eval::input_from_headers;
pub use parse::parse;
pub use trace_common::filter::{FilterInput, FilterProgram, FILTER_MAX_CLAUSES, FILTER_MAX_PREDS};

use thiserror::Error;

/// Why a filter was refused. Columns are 1-based character positions in the filter text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    #[error("filter column {column}: unexpected character '{ch}'")]
    BadChar { column: usize, ch: char },
    #[error("filter column {column}: expected {expected}, found {found}")]
    Unexpected {
        column: usize,
        expected: String,
        found: String,
    },
    #[error("filter column {column}: invalid {what} '{text}'")]
    InvalidValue {
        column: usize,
        what: &'static str,
        text: String,
    },
    #[error("filter column {column}: {what} is not supported ({hint})")]
    Unsupported {
        column: usize,
        what: String,
        hint: String,
    },
    #[error("filter column {column}: parentheses/negations nested deeper than {max}")]
    TooDeep { column: usize, max: usize },
    #[error(
        "filter too complex ({clauses} clauses > {max}); simplify it or use portrange/net prefixes"
    )]
    TooManyClauses { clauses: usize, max: usize },
    #[error("filter too complex (a clause needs {preds} predicates > {max})")]
    TooManyPredicates { preds: usize, max: usize },
}

/// Parse and compile a filter. The empty filter matches everything. A program with
/// `n_clauses == 0` is valid and matches nothing (e.g. `ip and ip6`): callers may warn.
pub fn compile(src: &str) -> Result<FilterProgram, FilterError> {
    compile_expr(&parse(src)?)
}
