//! The Grafana dashboard in `grafana/dashboards/dcb-runtime.json`: valid JSON that imports as is
//! (a datasource template variable, no `${DS_...}` import placeholders), a unit on every panel,
//! only metric names of the `dcb_runtime::metrics` contract, and PromQL that parses (with the
//! `promql-parser` crate, which follows Prometheus' grammar and type checks, so the test needs no
//! Prometheus binary).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dcb_runtime::metrics::ALL;
use serde_json::Value;

/// What a panel or target must name as its datasource: the template variable.
const DATASOURCE_UID: &str = "${datasource}";

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/dcb-runtime.json")
}

fn load() -> (String, Value) {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    (text, json)
}

/// Every panel, nested ones (inside collapsed rows) included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(!out.is_empty(), "the dashboard has no panels");
    out
}

fn title(panel: &Value) -> String {
    let title = panel["title"].as_str().unwrap_or("<untitled>");
    format!("panel {} ({title})", panel["id"])
}

/// Row panels only group others: they query nothing and show no unit.
fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn variables(dashboard: &Value) -> &[Value] {
    dashboard["templating"]["list"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// `(where, expr)` for every PromQL expression of every panel target.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        let targets = panel["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty()),
            "{} has no targets",
            title(panel)
        );
        for target in targets.into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{} has a target without a PromQL expr", title(panel)));
            assert!(
                !expr.trim().is_empty(),
                "{} has an empty expr",
                title(panel)
            );
            out.push((
                format!("{} target {}", title(panel), target["refId"]),
                expr.to_owned(),
            ));
        }
    }
    out
}

/// The `dcb_` metric names in an expression, histogram series suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("dcb_") {
        let preceded_by_name = rest[..at].chars().next_back().is_some_and(is_name_char);
        let token_len = rest[at..]
            .find(|c: char| !is_name_char(c))
            .unwrap_or(rest.len() - at);
        let token = &rest[at..at + token_len];
        if !preceded_by_name {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| token.strip_suffix(suffix))
                .unwrap_or(token);
            names.insert(name.to_owned());
        }
        rest = &rest[at + token_len..];
    }
    names
}

/// The expression as Prometheus sees it once Grafana has substituted its variables.
fn substitute(expr: &str) -> String {
    let concrete = expr
        .replace("${__rate_interval}", "1m")
        .replace("$__rate_interval", "1m")
        .replace("${__interval}", "1m")
        .replace("$__interval", "1m")
        .replace("${decision}", ".*")
        .replace("$decision", ".*");
    assert!(
        !concrete.contains('$'),
        "an expression uses a variable this test does not substitute: {expr}"
    );
    concrete
}

#[test]
fn the_dashboard_is_valid_json_with_unique_panel_ids() {
    let (_, dashboard) = load();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "no schemaVersion"
    );
    assert!(dashboard["uid"].as_str().is_some(), "no dashboard uid");
    let mut seen = BTreeSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{} has no numeric id", title(panel)));
        assert!(seen.insert(id), "panel id {id} is used twice");
    }
}

#[test]
fn the_datasource_is_a_template_variable_not_an_import_placeholder() {
    let (text, dashboard) = load();
    assert!(
        !text.contains("${DS_"),
        "the dashboard holds a ${{DS_...}} import placeholder"
    );
    assert!(
        !text.contains("__inputs"),
        "the dashboard holds an __inputs section"
    );
    let datasource = variables(&dashboard)
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a templating.list entry of type datasource");
    assert_eq!(datasource["name"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let refers_to_variable = |ds: &Value| ds["type"] == "prometheus" && ds["uid"] == DATASOURCE_UID;
    for panel in panels(&dashboard).into_iter().filter(|p| !is_row(p)) {
        assert!(
            refers_to_variable(&panel["datasource"]),
            "{} does not use the datasource variable: {}",
            title(panel),
            panel["datasource"]
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(ds) = target.get("datasource") {
                assert!(
                    refers_to_variable(ds),
                    "{} target {} does not use the datasource variable: {ds}",
                    title(panel),
                    target["refId"]
                );
            }
        }
    }
    for variable in variables(&dashboard)
        .iter()
        .filter(|v| v["type"] == "query")
    {
        assert!(
            refers_to_variable(&variable["datasource"]),
            "variable {} does not use the datasource variable",
            variable["name"]
        );
    }
}

#[test]
fn every_panel_has_a_unit() {
    let (_, dashboard) = load();
    for panel in panels(&dashboard).into_iter().filter(|p| !is_row(p)) {
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
        assert!(
            unit.is_some_and(|u| !u.is_empty()),
            "{} has no fieldConfig.defaults.unit",
            title(panel)
        );
    }
}

#[test]
fn every_metric_name_is_in_the_contract_and_every_metric_is_shown() {
    let (_, dashboard) = load();
    let mut sources = expressions(&dashboard);
    for variable in variables(&dashboard)
        .iter()
        .filter(|v| v["type"] == "query")
    {
        let query = match &variable["query"] {
            Value::String(q) => q.clone(),
            q => q["query"].as_str().unwrap_or_default().to_owned(),
        };
        sources.push((format!("variable {}", variable["name"]), query));
    }
    let mut used = BTreeSet::new();
    for (place, expr) in &sources {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place} names no dcb_ metric: {expr}");
        for name in names {
            assert!(
                ALL.contains(&name.as_str()),
                "{place} uses {name}, which is not in dcb_runtime::metrics::ALL: {expr}"
            );
            used.insert(name);
        }
    }
    let unshown: Vec<_> = ALL.iter().filter(|m| !used.contains(**m)).collect();
    assert!(unshown.is_empty(), "metrics without a panel: {unshown:?}");
}

/// Parses a dashboard expression as Prometheus would receive it from Grafana: the template
/// variables substituted first, since `$decision` or `$__rate_interval` are no PromQL.
fn parse_dashboard_expression(expr: &str) -> Result<promql_parser::parser::Expr, String> {
    promql_parser::parser::parse(&substitute(expr))
}

#[test]
fn every_expression_parses_as_promql() {
    let (_, dashboard) = load();
    let rejected: Vec<String> = expressions(&dashboard)
        .into_iter()
        .filter_map(|(place, expr)| {
            parse_dashboard_expression(&expr)
                .err()
                .map(|error| format!("  {place}: {expr}\n    {error}"))
        })
        .collect();
    assert!(
        rejected.is_empty(),
        "PromQL the parser rejects:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn the_promql_check_accepts_variables_and_rejects_broken_expressions() {
    parse_dashboard_expression(
        "sum by (decision) (rate(dcb_commands_total{decision=~\"$decision\"}[$__rate_interval]))",
    )
    .expect("a dashboard expression with template variables parses");
    // A syntax error, and an expression that is well formed but mistyped (rate of an instant
    // vector), which promtool rejected too.
    for broken in ["rate(foo[5m]", "rate(dcb_commands_total)", "sum by (le (x)"] {
        assert!(
            parse_dashboard_expression(broken).is_err(),
            "{broken} was accepted"
        );
    }
}

#[test]
fn metric_names_are_found_without_suffixes() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(dcb_read_duration_seconds_bucket[1m]))) \
             / rate(dcb_append_batch_size_count[1m]) + x_dcb_not_a_name"
        ),
        BTreeSet::from([
            "dcb_read_duration_seconds".to_owned(),
            "dcb_append_batch_size".to_owned()
        ])
    );
}
