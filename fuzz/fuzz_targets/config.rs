//! `config::parse` of arbitrary text with an arbitrary environment: it never panics, never
//! returns an empty error list, places every error inside the text, and gives the same
//! answer twice.
//!
//! Input: the YAML text, then optionally a NUL byte and the environment as `NAME=value`
//! lines (so a real configuration file is a valid seed as is).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (text, env) = match input.iter().position(|&b| b == 0) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let env = String::from_utf8_lossy(env);
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    let first = ssegate::config::parse(&text, &lookup);
    if let Err(errors) = &first {
        assert!(
            !errors.0.is_empty(),
            "an error result names at least one problem"
        );
        assert!(!errors.to_string().is_empty());
        // Every position points into the text (YAML breaks lines at LF, CRLF and a lone
        // CR; an error at the end of the input may name the line after the last).
        let lines = 1 + text.replace("\r\n", "\n").matches(['\n', '\r']).count();
        for e in &errors.0 {
            if let Some(line) = e.line {
                assert!(
                    (1..=lines + 1).contains(&line),
                    "{e}: line {line} of {lines}"
                );
            }
            assert!(e.column.is_none_or(|c| c >= 1), "{e}: column 0");
            assert!(
                e.column.is_none() || e.line.is_some(),
                "{e}: a column without a line"
            );
        }
    }
    assert_eq!(
        ssegate::config::parse(&text, &lookup),
        first,
        "parse is deterministic"
    );
});
