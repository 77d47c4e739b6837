//! `portcullis test`: runs the policy test files of each directory (see `policytest`).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::TestFormat;
use crate::config::Config;

pub(super) fn run_tests(
    dirs: Vec<PathBuf>,
    config: Option<PathBuf>,
    format: TestFormat,
    output: Option<PathBuf>,
    coverage: bool,
) -> anyhow::Result<ExitCode> {
    use crate::policytest;
    let mut cfg = match &config {
        Some(p) => Config::load(p)?,
        None => Config::from_yaml("policy: {dir: .}\n").map_err(anyhow::Error::msg)?,
    };
    let dirs = if dirs.is_empty() {
        vec![cfg.policy.dir.clone().context("no policy directory given and none in the config")?]
    } else {
        dirs
    };
    let mut suites = Vec::new();
    for dir in &dirs {
        let files = policytest::read_test_files(dir)?;
        if config.is_none() {
            policytest::add_case_issuers(&mut cfg, &files)?;
            policytest::add_case_namespaces(&mut cfg, &files);
        }
        suites.push((dir, files));
    }
    let cases: usize = suites.iter().flat_map(|(_, f)| f).map(|(_, t)| t.cases.len()).sum();
    anyhow::ensure!(cases > 0, "no test cases (*{}) in {}", policytest::TEST_FILE_SUFFIX, join_paths(&dirs));
    let mut reports = Vec::new();
    for (dir, files) in &suites {
        reports.push(policytest::run_dir(&cfg, dir, files)?);
    }
    let human = policytest::render_human(&reports, coverage);
    match format {
        TestFormat::Human => say_raw!("{human}"),
        TestFormat::Junit => {
            let xml = policytest::render_junit(&reports)?;
            match &output {
                Some(p) => std::fs::write(p, xml).with_context(|| format!("writing {}", p.display()))?,
                None => say_raw!("{xml}"),
            }
            // People still read the summary; stdout may be the XML.
            eprint!("{human}");
        }
    }
    let failed = reports.iter().flat_map(|r| &r.results).any(|r| !r.passed());
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}
