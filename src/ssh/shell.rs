//! Shell quoting for commands sent to hosts: values are never interpolated raw.

use std::collections::BTreeMap;

/// `s` as one POSIX shell word.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `command` with `export K='V';` for each env entry first (sorted, quoted; Sealer does not quote).
pub fn with_env(env: &BTreeMap<String, String>, command: &str) -> String {
    let mut out = String::new();
    for (k, v) in env {
        out.push_str(&format!("export {k}={}; ", quote(v)));
    }
    out.push_str(command);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "with space", "it's", "$(rm -rf /)", "a\nb", "", "`x`;y"] {
            let out =
                std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(s))).output().unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
        let env = BTreeMap::from([("B".to_string(), "x y".to_string()), ("A".to_string(), "1".to_string())]);
        assert_eq!(with_env(&env, "run"), "export A=1; export B='x y'; run");
    }
}
