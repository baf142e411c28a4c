//! AST → disjunctive normal form → [`FilterProgram`].
//!
//! Negations are pushed to the primitives (De Morgan), then ANDs are distributed over ORs. The
//! clause count can grow exponentially (`(a or b) and (c or d) and ...`), so every step is
//! bounded and the result must fit the fixed ABI arrays; otherwise the filter is refused with
//! the count, never truncated.

use super::ast::{Dir, Expr, Prim};
use super::FilterError;
use std::net::IpAddr;
use trace_common::filter::{
    dir, pred_kind, FilterClause, FilterPredicate, FilterProgram, FILTER_MAX_CLAUSES,
    FILTER_MAX_PREDS, IFNAME_LEN,
};

/// A primitive, possibly negated.
type Lit = (Prim, bool);
type Clause = Vec<Lit>;

/// Largest intermediate clause count before simplification gets a chance to shrink it.
pub const WORK_LIMIT: usize = 1024;

pub fn compile_expr(e: &Expr) -> Result<FilterProgram, FilterError> {
    let clauses = dnf(e, false)?;
    if clauses.len() > FILTER_MAX_CLAUSES {
        return Err(FilterError::TooManyClauses {
            clauses: clauses.len(),
            max: FILTER_MAX_CLAUSES,
        });
    }
    let mut prog = FilterProgram::NONE;
    prog.n_clauses = clauses.len() as u32;
    for (slot, clause) in prog.clauses.iter_mut().zip(&clauses) {
        *slot = lower_clause(clause)?;
    }
    Ok(prog)
}

/// DNF of `e` (negated when `neg`). Recursion depth is bounded by the parser's nesting limit.
fn dnf(e: &Expr, neg: bool) -> Result<Vec<Clause>, FilterError> {
    let out = match (e, neg) {
        (Expr::True, false) => vec![vec![]],
        (Expr::True, true) => vec![],
        (Expr::Prim(p), n) => vec![vec![(p.clone(), n)]],
        (Expr::Not(x), n) => dnf(x, !n)?,
        (Expr::And(a, b), false) | (Expr::Or(a, b), true) => product(dnf(a, neg)?, dnf(b, neg)?)?,
        (Expr::Or(a, b), false) | (Expr::And(a, b), true) => {
            let mut v = dnf(a, neg)?;
            v.extend(dnf(b, neg)?);
            v
        }
    };
    let out = simplify(out);
    if out.len() > WORK_LIMIT {
        return Err(FilterError::TooManyClauses {
            clauses: out.len(),
            max: FILTER_MAX_CLAUSES,
        });
    }
    Ok(out)
}

fn product(a: Vec<Clause>, b: Vec<Clause>) -> Result<Vec<Clause>, FilterError> {
    let n = a.len().saturating_mul(b.len());
    if n > WORK_LIMIT {
        return Err(FilterError::TooManyClauses {
            clauses: n,
            max: FILTER_MAX_CLAUSES,
        });
    }
    let mut out = Vec::with_capacity(n);
    for x in &a {
        for y in &b {
            let mut c = x.clone();
            c.extend(y.iter().cloned());
            out.push(c);
        }
    }
    Ok(out)
}

/// Drop duplicate literals, impossible clauses and clauses implied by smaller ones. Only
/// shrinks the program; the meaning is unchanged.
fn simplify(clauses: Vec<Clause>) -> Vec<Clause> {
    let mut kept: Vec<Clause> = clauses.into_iter().filter_map(dedup_clause).collect();
    kept.sort_by_key(|c| c.len());
    let mut out: Vec<Clause> = Vec::new();
    for c in kept {
        // Absorption: a ∨ (a ∧ b) = a.
        if !out.iter().any(|small| small.iter().all(|l| c.contains(l))) {
            out.push(c);
        }
    }
    out
}

/// The clause without repeated literals, or None when it can never match.
fn dedup_clause(c: Clause) -> Option<Clause> {
    let mut out: Clause = Vec::with_capacity(c.len());
    for lit in c {
        if out.contains(&lit) {
            continue;
        }
        if out.iter().any(|o| contradicts(o, &lit)) {
            return None;
        }
        out.push(lit);
    }
    Some(out)
}

/// Two literals that cannot both hold: `x and not x`, two families, two protocols.
fn contradicts(a: &Lit, b: &Lit) -> bool {
    match (a, b) {
        ((pa, na), (pb, nb)) if pa == pb => na != nb,
        ((Prim::Family(x), false), (Prim::Family(y), false)) => x != y,
        ((Prim::Proto(x), false), (Prim::Proto(y), false)) => x != y,
        _ => false,
    }
}

fn lower_clause(c: &Clause) -> Result<FilterClause, FilterError> {
    if c.len() > FILTER_MAX_PREDS {
        return Err(FilterError::TooManyPredicates {
            preds: c.len(),
            max: FILTER_MAX_PREDS,
        });
    }
    let mut out = FilterClause::EMPTY;
    out.n_preds = c.len() as u32;
    for (slot, (prim, neg)) in out.preds.iter_mut().zip(c) {
        *slot = lower_prim(prim);
        slot.negate = *neg as u8;
    }
    Ok(out)
}

fn abi_dir(d: Dir) -> u8 {
    match d {
        Dir::Src => dir::SRC,
        Dir::Dst => dir::DST,
        Dir::Either => dir::EITHER,
        Dir::Both => dir::BOTH,
    }
}

fn lower_prim(p: &Prim) -> FilterPredicate {
    let mut pred = FilterPredicate::ZERO;
    match p {
        Prim::Family(f) => {
            pred.kind = pred_kind::FAMILY;
            pred.lo = f.nfproto() as u32;
        }
        Prim::Proto(n) => {
            pred.kind = pred_kind::PROTO;
            pred.lo = *n as u32;
        }
        Prim::Net { dir, net } => {
            pred.kind = pred_kind::ADDR;
            pred.dir = abi_dir(*dir);
            pred.family = net.family().nfproto();
            pred.addr = addr_bytes(net.addr);
            pred.mask = mask_bytes(net.prefix);
        }
        Prim::Port { dir, lo, hi } => {
            pred.kind = pred_kind::PORT;
            pred.dir = abi_dir(*dir);
            pred.lo = *lo as u32;
            pred.hi = *hi as u32;
        }
        Prim::Iface { dir, name, prefix } => {
            pred.kind = pred_kind::IFACE;
            pred.dir = abi_dir(*dir);
            // The parser guarantees len < IFNAME_LEN, so a NUL always follows the name.
            for (dst, src) in pred.name.iter_mut().zip(name.bytes().take(IFNAME_LEN - 1)) {
                *dst = src;
            }
            pred.lo = name.len() as u32;
            pred.hi = *prefix as u32;
            // Compare the name and its NUL, or only the prefix (see pred_kind::IFACE).
            let covered = if *prefix { name.len() } else { name.len() + 1 };
            for m in pred.mask.iter_mut().take(covered.min(IFNAME_LEN)) {
                *m = 0xff;
            }
        }
        Prim::Mark { value, mask } => {
            pred.kind = pred_kind::MARK;
            pred.lo = *value;
            pred.hi = *mask;
        }
        Prim::IcmpType(t) => {
            pred.kind = pred_kind::ICMP_TYPE;
            pred.lo = *t as u32;
        }
    }
    pred
}

/// Network byte order, IPv4 in bytes 0..4 (the FilterInput layout).
pub(super) fn addr_bytes(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn mask_bytes(prefix: u8) -> [u8; 16] {
    let bits = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
    bits.to_be_bytes()
}
