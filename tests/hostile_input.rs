//! No panics on hostile input: arbitrary strings into every parser that reads text from a
//! user or a client — label and field selectors (config and cache API queries), JSON Pointer
//! globs (transforms, routes), `${VAR}` expansion and the whole config loader. Each must
//! answer with a value or an error, never a panic.

use std::collections::BTreeMap;

use k8s_selector::{FieldSelector, LabelSelector};
use lookout::config::{Config, Plan, expand_str};
use lookout::event::pointer::{PointerGlob, segment_matches};
use proptest::prelude::*;
use serde_json::json;

/// Strings rich in what parsers trip over: escapes, separators, multibyte characters.
fn hostile() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "\\",
        "\\\\",
        ",",
        "=",
        "==",
        "!=",
        "!",
        "(",
        ")",
        "in",
        "notin",
        " ",
        "/",
        "~",
        "~0",
        "~1",
        "*",
        "$",
        "${",
        "}",
        ":-",
        "$$",
        "é",
        "€",
        "日本",
        "🦀",
        "\u{0}",
        "\n",
        "a",
        "x.y",
        "-",
        "_",
        ">",
        "<",
        "0",
        "99999999999999999999",
        "'",
        "\"",
        "{",
        "[",
        "]",
        ":",
        "#",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn selectors_parse_or_refuse_any_string(s in hostile()) {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        if let Ok(sel) = LabelSelector::parse(&s) {
            let _ = sel.matches(&labels);
        }
        if let Ok(sel) = FieldSelector::parse(&s) {
            let _ = sel.matches(&json!({"metadata": {"name": "x"}}), "Pod");
            let _ = sel.required_name();
        }
    }

    #[test]
    fn pointer_globs_parse_or_refuse_any_string_and_never_panic_matching(
        glob in hostile(),
        pointer in hostile(),
        key in hostile(),
    ) {
        let _ = segment_matches(&glob, &key);
        if let Ok(g) = PointerGlob::parse(&glob) {
            let _ = g.matches_prefix_of(&pointer);
            let _ = g.overlaps(&pointer);
            let mut v = json!({"a": [{"b": key.clone()}], key.clone(): {"c": 1}});
            let _ = g.select(&v);
            g.for_each_mut(&mut v, &mut |x| *x = json!("r"));
            let mut out = serde_json::Value::Null;
            g.copy_into(&v, &mut out);
            g.remove_from(&mut v);
        }
    }

    #[test]
    fn variable_expansion_expands_or_refuses_any_string(s in hostile(), value in hostile()) {
        let _ = expand_str(&s, &|name| (name.len() % 2 == 0).then(|| value.clone()));
    }

    #[test]
    fn the_config_loader_refuses_any_string_without_panicking(s in hostile()) {
        if let Ok(config) = Config::from_yaml_str(&s) {
            let _ = Plan::compile(config);
        }
    }

    #[test]
    fn hostile_values_in_a_valid_config_are_errors_not_panics(v in hostile()) {
        // The same string in every key with a syntax of its own.
        let quoted = serde_json::to_string(&v).unwrap();
        let yaml = format!(
            "cluster: {quoted}
resources:
  - apiVersion: {quoted}
    kind: Pod
    labelSelector: {quoted}
    fieldSelector: {quoted}
sinks:
  - {{name: out, type: stdout}}
  - {{name: f, type: file, path: /dev/null, mode: {quoted}}}
  - {{name: h, type: webhook, url: {quoted}, deadLetterStatuses: [{quoted}]}}
routes:
  - sinks: [out]
    kinds: [{quoted}]
    changed: [{quoted}]
    when: [{{path: {quoted}, matches: {quoted}}}]
    transforms: {{redact: [{{path: {quoted}}}]}}
transforms:
  redactionKey: {quoted}
  ignorePaths: [{quoted}]
  secretKinds: [{{group: {quoted}, kind: {quoted}, paths: [{quoted}]}}]
server:
  cache: {{enabled: true, token: {quoted}}}
"
        );
        // Loaded, then compiled: every value checked by its own parser.
        if let Ok(config) = Config::from_yaml_str(&yaml) {
            let _ = Plan::compile(config);
        }
    }
}

/// The cases that used to panic: a backslash before a multibyte character, or any
/// multibyte character at all (proptest's minimal failing input was `é`).
#[test]
fn field_selectors_with_multibyte_characters_parse() {
    let s = FieldSelector::parse("metadata.name=a\\é").unwrap();
    assert_eq!(s.requirements[0].value, "aé");
    assert!(FieldSelector::parse("é").is_err());
    assert_eq!(
        FieldSelector::parse("spec.nodeName=日本")
            .unwrap()
            .requirements[0]
            .value,
        "日本"
    );
}
