//! The shipped deployment files and example configs stay valid: every YAML file parses,
//! and every ssegate configuration shipped in the repo passes `ssegate check`.

use saphyr_parser::{Event, Parser};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every scalar of a YAML stream (all documents), failing on a syntax error.
fn scalars(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut parser = Parser::new_from_str(&text);
    let mut out = Vec::new();
    while let Some(next) = parser.next_event() {
        let (event, _) = next.unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
        if let Event::Scalar(text, ..) = event {
            out.push(text.into_owned());
        }
    }
    out
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn check(text: &str, origin: &str) {
    let env = |name: &str| Some(format!("test-value-for-{name}"));
    if let Err(errors) = ssegate::config::parse(text, &env) {
        panic!("{origin}: the ssegate configuration is not valid:\n{errors}\n---\n{text}");
    }
}

#[test]
fn every_shipped_yaml_parses_and_every_embedded_config_is_valid() {
    let mut files = Vec::new();
    yaml_files(&Path::new(ROOT).join("deploy"), &mut files);
    yaml_files(&Path::new(ROOT).join("config"), &mut files);
    assert!(files.len() >= 4, "{files:?}");
    let mut configs = 0;
    for file in &files {
        let scalars = scalars(file);
        if file.starts_with(Path::new(ROOT).join("config")) {
            check(
                &std::fs::read_to_string(file).unwrap(),
                &file.display().to_string(),
            );
            configs += 1;
            continue;
        }
        // Configs embedded in a ConfigMap or a compose `configs:` entry.
        for s in scalars
            .iter()
            .filter(|s| s.lines().any(|l| l.starts_with("upstream:")))
        {
            check(s, &file.display().to_string());
            configs += 1;
        }
    }
    assert!(
        configs >= 5,
        "expected the example, the default and the deploy configs; found {configs}"
    );
}

#[test]
fn kubernetes_probes_and_grace_match_the_config() {
    let path = Path::new(ROOT).join("deploy/kubernetes/ssegate.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let scalars = scalars(&path);
    let config = scalars.iter().find(|s| s.contains("upstream:")).unwrap();
    let env = |_: &str| Some("x".to_owned());
    let config = ssegate::config::parse(config, &env).unwrap();
    let grace = config.shutdown.grace.as_secs();
    let period: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        period >= grace + 5,
        "terminationGracePeriodSeconds {period} must cover preStop + shutdown.grace {grace}"
    );
    assert!(text.contains("path: /readyz") && text.contains("path: /healthz"));
    assert_eq!(config.admin_listen.port(), 8081);
}
