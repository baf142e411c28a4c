//! The guest's console protocol and the kernel × backend table.
//!
//! The guest prints (one line each, prefix `VMTEST`):
//! `VMTEST kernel <uname -r> ...`, `VMTEST modules-missing <names|none>`, `VMTEST begin`,
//! `VMTEST result <backend> <case> PASS|FAIL|SKIP <detail>` per test, `VMTEST end rc=<n>`.

use super::boot::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub backend: String,
    pub case: String,
    pub status: String,
    pub detail: String,
}

#[derive(Debug)]
pub struct KernelRun {
    pub label: String,
    pub package: String,
    pub uname: Option<String>,
    pub missing_modules: String,
    pub results: Vec<CaseResult>,
    /// `VMTEST end rc=` value, None when the guest never got there.
    pub rc: Option<i32>,
    pub timed_out: bool,
    pub secs: f64,
    /// Requested backends the guest printed no result line for (a silent backend fails).
    pub silent_backends: Vec<String>,
    /// Boot failures before this run (retried), with what went wrong.
    pub boot_failures: Vec<String>,
}

impl KernelRun {
    pub fn parse(label: &str, package: &str, o: &Outcome) -> KernelRun {
        let mut run = KernelRun {
            label: label.into(),
            package: package.into(),
            uname: None,
            missing_modules: String::new(),
            results: Vec::new(),
            rc: None,
            timed_out: o.timed_out,
            secs: o.secs,
            silent_backends: Vec::new(),
            boot_failures: Vec::new(),
        };
        for line in &o.lines {
            // The console may prefix the first line with terminal escapes.
            let Some(rest) = line.find("VMTEST ").map(|i| &line[i + 7..]) else {
                continue;
            };
            let mut w = rest.split_whitespace();
            match w.next() {
                Some("kernel") => run.uname = w.next().map(String::from),
                Some("modules-missing") => run.missing_modules = w.collect::<Vec<_>>().join(" "),
                Some("result") => {
                    let (Some(b), Some(c), Some(s)) = (w.next(), w.next(), w.next()) else {
                        continue;
                    };
                    run.results.push(CaseResult {
                        backend: b.into(),
                        case: c.into(),
                        status: s.into(),
                        detail: w.collect::<Vec<_>>().join(" "),
                    });
                }
                Some("end") => {
                    run.rc = w
                        .next()
                        .and_then(|r| r.strip_prefix("rc="))
                        .and_then(|r| r.parse().ok())
                }
                _ => {}
            }
        }
        run
    }

    /// Every backend asked for must have printed at least one result (PASS, FAIL or a SKIP
    /// with its reason): a backend whose cases vanished is a failure, not a pass.
    pub fn require_backends(&mut self, backends: &[&str]) {
        self.silent_backends = backends
            .iter()
            .filter(|b| !self.results.iter().any(|r| r.backend == **b))
            .map(|b| b.to_string())
            .collect();
    }

    /// The guest finished, its command exited 0, no case failed and every backend reported.
    pub fn ok(&self) -> bool {
        self.rc == Some(0)
            && !self.timed_out
            && self.silent_backends.is_empty()
            && !self.results.iter().any(|r| r.status == "FAIL")
    }
}

/// Kernel × backend table, then every failed or skipped case with its reason.
pub fn table(runs: &[KernelRun]) -> String {
    let mut backends: Vec<&str> = Vec::new();
    for r in runs.iter().flat_map(|k| &k.results) {
        if !backends.contains(&r.backend.as_str()) {
            backends.push(&r.backend);
        }
    }
    let mut out = format!("{:<28}", "kernel");
    for b in &backends {
        out.push_str(&format!(" {b:<14}"));
    }
    out.push('\n');
    for k in runs {
        let name = format!("{} ({})", k.label, k.uname.as_deref().unwrap_or("?"));
        out.push_str(&format!("{name:<28}"));
        for b in &backends {
            out.push_str(&format!(" {:<14}", cell(k, b)));
        }
        if k.timed_out {
            out.push_str(&format!("  TIMEOUT after {:.0}s", k.secs));
        } else if k.rc.is_none() {
            out.push_str("  guest did not finish (see log)");
        } else {
            out.push_str(&format!("  {:.0}s", k.secs));
        }
        out.push('\n');
    }
    for k in runs {
        out.push_str(&format!("{}: {}\n", k.label, k.package));
        for f in &k.boot_failures {
            out.push_str(&format!("{}: boot failure (retried): {f}\n", k.label));
        }
        if !k.silent_backends.is_empty() {
            out.push_str(&format!(
                "{}: FAIL: no result at all for backend(s) {}\n",
                k.label,
                k.silent_backends.join(", ")
            ));
        }
        if !k.missing_modules.is_empty() && k.missing_modules != "none" {
            out.push_str(&format!(
                "{}: modules missing: {}\n",
                k.label, k.missing_modules
            ));
        }
        for r in k.results.iter().filter(|r| r.status != "PASS") {
            out.push_str(&format!(
                "{}: {} {} {}: {}\n",
                k.label, r.backend, r.case, r.status, r.detail
            ));
        }
    }
    out
}

fn cell(k: &KernelRun, backend: &str) -> String {
    let rs: Vec<&CaseResult> = k.results.iter().filter(|r| r.backend == backend).collect();
    let count = |s: &str| rs.iter().filter(|r| r.status == s).count();
    let (pass, fail, skip) = (count("PASS"), count("FAIL"), count("SKIP"));
    match (pass, fail, skip) {
        (0, 0, 0) => "-".into(),
        (_, 0, 0) => format!("PASS {pass}"),
        (0, 0, _) => "SKIP".into(),
        (_, 0, _) => format!("PASS {pass} SKIP {skip}"),
        _ => format!("FAIL {fail}/{}", pass + fail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_console_and_tabulates() {
        let lines = [
            "[    1.0] noise",
            "\x1bc\x1b[?7l\x1b[2JVMTEST kernel 6.1.0-56-amd64 cpus=2",
            "VMTEST modules-missing none",
            "VMTEST result fentry legacy-remote PASS 7 hook/table steps",
            "VMTEST result kprobe legacy-remote FAIL verdict missing",
            "VMTEST result nfhook all SKIP kernel 6.1 < 6.4: no netfilter links",
            "VMTEST end rc=1",
        ];
        let o = Outcome {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            timed_out: false,
            secs: 30.0,
            status: None,
        };
        let k = KernelRun::parse("6.1", "linux-image-6.1.0-56-amd64-unsigned", &o);
        assert_eq!(k.rc, Some(1));
        assert_eq!(k.uname.as_deref(), Some("6.1.0-56-amd64"));
        assert!(!k.ok());
        let t = table(&[k]);
        assert!(
            t.contains("PASS 1") && t.contains("FAIL 1/1") && t.contains("SKIP"),
            "{t}"
        );
        assert!(
            t.contains("kprobe legacy-remote FAIL: verdict missing"),
            "{t}"
        );
    }

    #[test]
    fn unfinished_guest_is_not_ok() {
        let o = Outcome {
            lines: vec!["VMTEST kernel 6.1".into()],
            timed_out: true,
            secs: 900.0,
            status: None,
        };
        let k = KernelRun::parse("6.1", "p", &o);
        assert!(!k.ok());
        assert!(table(&[k]).contains("TIMEOUT"));
    }

    #[test]
    fn a_backend_without_results_fails_the_run() {
        let lines = [
            "VMTEST kernel 6.1.0-56-amd64 cpus=2",
            "VMTEST begin",
            "VMTEST result fentry remote-syn-legacy PASS ok",
            "VMTEST end rc=0",
        ];
        let o = Outcome {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            timed_out: false,
            secs: 30.0,
            status: None,
        };
        let mut k = KernelRun::parse("6.1", "p", &o);
        k.require_backends(&["fentry"]);
        assert!(k.ok());
        k.require_backends(&["fentry", "kprobe"]);
        assert!(!k.ok());
        assert!(table(&[k]).contains("no result at all for backend(s) kprobe"));
    }

    #[test]
    fn boot_failure_is_only_before_the_tests() {
        let mut o = Outcome {
            lines: vec!["Kernel panic - not syncing".into()],
            timed_out: false,
            secs: 12.0,
            status: None,
        };
        assert!(o.boot_failure().unwrap().contains("Kernel panic"));
        o.lines.push("VMTEST begin".into());
        o.timed_out = true;
        // A hang after the tests began is a test failure, never retried.
        assert_eq!(o.boot_failure(), None);
    }
}
