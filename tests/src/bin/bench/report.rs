//! Results as tables: printed to the terminal at the end of a run and written to
//! BENCHMARKS.md together with the machine they were measured on.

use std::{fmt::Write as _, process::Command};

/// A table of already formatted cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Aligned plain-text columns for the terminal.
    pub fn text(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| {
                    let pad = width.saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&rule.join("  "));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = if self.title.is_empty() {
            String::new()
        } else {
            format!("**{}**\n\n", self.title)
        };
        let escape = |cell: &String| cell.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| {} |",
            self.headers
                .iter()
                .map(escape)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(out, "|{}", "---|".repeat(self.headers.len()));
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} |",
                row.iter().map(escape).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }
}

/// Outcome of one of the goals the issue sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The part of the benchmark it depends on did not run or could not measure.
    NotMeasured,
}

impl Verdict {
    pub fn from_bool(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::NotMeasured => "not measured",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Goal {
    pub goal: String,
    pub verdict: Verdict,
    /// The figure the verdict rests on.
    pub measured: String,
    /// Why it was missed or not measured (empty when met).
    pub why: String,
}

/// One part of the benchmark: how it was measured, its tables and goals.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    /// Markdown paragraphs or bullet lists explaining the method.
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    /// Markdown remarks after the tables (checks done, caveats).
    pub notes: Vec<String>,
    pub goals: Vec<Goal>,
}

/// What the run was measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory: String,
    pub kernel: String,
    pub date: String,
    pub tools: Vec<(String, String)>,
    /// CPU vulnerabilities the kernel mitigates (or not): they change what
    /// kernel function calls and returns cost.
    pub mitigations: Vec<String>,
    /// `/proc/loadavg` when the run started: other work on the machine.
    pub load: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".to_owned());
        let tools = [
            ("haproxy", &["-v"][..]),
            ("iptables", &["-V"][..]),
            ("wrk", &["-v"][..]),
        ]
        .iter()
        .filter_map(|(tool, args)| {
            let output = Command::new(tool).args(*args).output().ok()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())?
                .trim()
                .to_owned();
            Some(((*tool).to_owned(), first))
        })
        .collect();
        let mitigations = ["spectre_v2", "spec_rstack_overflow", "retbleed"]
            .iter()
            .filter_map(|name| {
                let path = format!("/sys/devices/system/cpu/vulnerabilities/{name}");
                let text = std::fs::read_to_string(path).ok()?;
                Some(format!("{name}: {}", text.trim()))
            })
            .collect();
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine {
            mitigations,
            load,
            cpus: crate::stats::online_cpus(),
            model,
            memory,
            kernel: command_line_output("uname", &["-r"]),
            date: command_line_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            tools,
        }
    }
}

fn command_line_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Everything to print at the end of a run.
pub fn text(sections: &[Section]) -> String {
    let mut out = String::new();
    for section in sections {
        let _ = writeln!(out, "=== {}", section.title);
        for table in &section.tables {
            out.push_str(&table.text());
            out.push('\n');
        }
    }
    let goals = goals_table(sections);
    if !goals.rows.is_empty() {
        out.push_str(&goals.text());
    }
    out
}

fn goals_table(sections: &[Section]) -> Table {
    let mut table = Table::new("Goals", &["goal", "result", "measured", "why"]);
    for goal in sections.iter().flat_map(|s| &s.goals) {
        table.row(vec![
            goal.goal.clone(),
            goal.verdict.label().to_owned(),
            goal.measured.clone(),
            goal.why.clone(),
        ]);
    }
    table
}

/// BENCHMARKS.md.
pub fn markdown(machine: &Machine, command: &str, runtime: &str, sections: &[Section]) -> String {
    let mut out = String::from("# Benchmarks\n\n");
    out.push_str(
        "Generated by `lb-bench` (`cargo xtask bench`); do not edit by hand, re-run it. \
         Every figure is the median of several runs; ranges in parentheses are the \
         smallest and largest run.\n\n",
    );
    out.push_str("## Machine and run\n\n");
    let _ = writeln!(out, "- CPUs: {} x {}", machine.cpus, machine.model);
    let _ = writeln!(out, "- Memory: {}", machine.memory);
    let _ = writeln!(out, "- Kernel: {}", machine.kernel);
    if !machine.mitigations.is_empty() {
        let _ = writeln!(
            out,
            "- CPU vulnerability status: {}",
            machine.mitigations.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "- Load average when the run started (1, 5, 15 min): {}",
        machine.load
    );
    let _ = writeln!(out, "- Date: {}", machine.date);
    let _ = writeln!(out, "- Command: `{command}`");
    let _ = writeln!(out, "- Runtime: {runtime}");
    for (tool, version) in &machine.tools {
        let _ = writeln!(out, "- {tool}: {version}");
    }
    out.push('\n');
    let goals = goals_table(sections);
    if !goals.rows.is_empty() {
        out.push_str("## Goals\n\n");
        // The section heading names it already.
        let untitled = Table {
            title: String::new(),
            ..goals
        };
        out.push_str(&untitled.markdown());
        out.push('\n');
    }
    for section in sections {
        let _ = writeln!(out, "## {}\n", section.title);
        for paragraph in &section.method {
            out.push_str(paragraph.trim_end());
            out.push_str("\n\n");
        }
        for table in &section.tables {
            out.push_str(&table.markdown());
            out.push('\n');
        }
        for note in &section.notes {
            out.push_str(note.trim_end());
            out.push_str("\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render() {
        let mut table = Table::new("T", &["a", "bb"]);
        table.row(vec!["1|2".into(), "x".into()]);
        assert!(table.markdown().contains("| 1\\|2 | x |"));
        let text = table.text();
        assert!(text.contains("a    bb"), "{text}");
    }
}
