//! `${VAR}` expansion inside config string values.
//!
//! Selectors such as `spec.nodeName=${NODE_NAME}` must be filled from the pod's environment
//! (the downward API) at start, so expansion runs over every string of the merged config
//! before it is deserialized. `$$` writes a literal `$`.

use figment::value::{Dict, Value};

/// Why a `${...}` reference could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExpandError {
    /// The variable is not set in the environment.
    #[error("environment variable `{0}` is not set")]
    Unset(String),
    /// `${` without a closing `}`.
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
}

/// Expands `${VAR}` (and `${VAR:-default}`) in every string of `value`, returning the first
/// failure together with the key path where it happened.
pub fn expand_value(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, ExpandError)> {
    match value {
        Value::String(_, s) => {
            if s.contains('$') {
                *s = expand_str(s, lookup).map_err(|e| (path.join("."), e))?;
            }
            Ok(())
        }
        Value::Dict(_, dict) => expand_dict(dict, path, lookup),
        Value::Array(_, items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_value(item, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn expand_dict(
    dict: &mut Dict,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, ExpandError)> {
    for (key, item) in dict.iter_mut() {
        path.push(key.clone());
        expand_value(item, path, lookup)?;
        path.pop();
    }
    Ok(())
}

/// Expands one string.
pub fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ExpandError::Unterminated(s.to_string()))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => match default {
                    Some(d) => out.push_str(d),
                    None => return Err(ExpandError::Unset(name.to_string())),
                },
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "NODE_NAME").then(|| "node-1".to_string())
    }

    #[test]
    fn expands_set_variables_defaults_and_escapes() {
        assert_eq!(
            expand_str("spec.nodeName=${NODE_NAME}", &env).unwrap(),
            "spec.nodeName=node-1"
        );
        assert_eq!(expand_str("${MISSING:-x}", &env).unwrap(), "x");
        assert_eq!(expand_str("cost $$5", &env).unwrap(), "cost $5");
        assert_eq!(expand_str("a$b", &env).unwrap(), "a$b");
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        assert_eq!(
            expand_str("${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert!(matches!(
            expand_str("${NOPE", &env),
            Err(ExpandError::Unterminated(_))
        ));
    }
}
