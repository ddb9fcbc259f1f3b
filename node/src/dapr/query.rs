//! Dapr's state query language (alpha) evaluated over JSON values: `EQ`, `NEQ`, `GT`,
//! `GTE`, `LT`, `LTE`, `IN`, `AND`, `OR`, dotted field paths, multi-key sort, and paging
//! with an offset token.

use super::Got;
use crate::error::Error;
use serde_json::Value;
use std::cmp::Ordering;

/// Deepest filter nesting accepted: a hostile query cannot recurse the stack away.
const MAX_DEPTH: usize = 32;

#[derive(Debug, PartialEq)]
enum Filter {
    Cmp(Cmp, Vec<String>, Value),
    In(Vec<String>, Vec<Value>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, PartialEq)]
struct SortKey {
    path: Vec<String>,
    descending: bool,
}

/// A parsed query.
#[derive(Debug, PartialEq)]
pub struct Query {
    filter: Option<Filter>,
    sort: Vec<SortKey>,
    limit: usize,
    offset: usize,
}

/// One page of results and the token of the next page, if any.
pub struct Page {
    pub results: Vec<Got>,
    pub token: Option<String>,
}

impl Query {
    pub fn parse(text: &[u8]) -> Result<Query, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("invalid query: {e}"))?;
        let Value::Object(obj) = v else {
            return Err("query must be a JSON object".into());
        };
        let mut q = Query { filter: None, sort: Vec::new(), limit: 0, offset: 0 };
        for (k, v) in obj {
            match k.as_str() {
                "filter" => {
                    let empty = v.as_object().is_some_and(|o| o.is_empty());
                    q.filter = if empty { None } else { Some(filter(&v, 0)?) };
                }
                "sort" => q.sort = sort(&v)?,
                "page" => (q.limit, q.offset) = page(&v)?,
                other => return Err(format!("unknown query field {other:?}")),
            }
        }
        Ok(q)
    }

    /// Filters, sorts and pages `items` (in key order). Values that are not JSON are
    /// matched as JSON strings. A page holds at most `max_bytes` of keys and values (one
    /// result at least; the token continues after it); results of a query without a page
    /// limit that do not fit are an error: they are to be paged.
    pub fn run(&self, items: Vec<Got>, max_bytes: usize) -> Result<Page, Error> {
        let mut rows: Vec<(Value, Got)> = items
            .into_iter()
            .filter_map(|g| {
                let v = g.value.as_deref().map(json_of)?;
                self.filter.as_ref().is_none_or(|f| f.matches(&v)).then_some((v, g))
            })
            .collect();
        if !self.sort.is_empty() {
            rows.sort_by(|(a, _), (b, _)| {
                for s in &self.sort {
                    let o = order(lookup(a, &s.path), lookup(b, &s.path));
                    let o = if s.descending { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
        }
        let total = rows.len();
        let start = self.offset.min(total);
        let mut end = if self.limit == 0 { total } else { start.saturating_add(self.limit).min(total) };
        let mut bytes = 0usize;
        let size = |g: &Got| g.key.len() + g.value.as_ref().map_or(0, |v| v.len());
        if let Some(over) = rows[start..end].iter().position(|(_, g)| {
            bytes += size(g);
            bytes > max_bytes
        }) {
            if self.limit == 0 {
                return Err(Error::TooLarge(format!("the results are over {max_bytes} bytes: page them (page.limit)")));
            }
            end = start + over.max(1);
        }
        let token = (self.limit > 0 && end < total).then(|| end.to_string());
        let results = rows.drain(start..end).map(|(_, g)| g).collect();
        Ok(Page { results, token })
    }
}

/// The JSON view of stored bytes: parsed when they are JSON, else a string.
pub fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn path(field: &str) -> Result<Vec<String>, String> {
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(format!("invalid field {field:?}"));
    }
    Ok(field.split('.').map(str::to_string).collect())
}

fn filter(v: &Value, depth: usize) -> Result<Filter, String> {
    if depth > MAX_DEPTH {
        return Err(format!("filter nested deeper than {MAX_DEPTH}"));
    }
    let obj = v.as_object().filter(|o| o.len() == 1).ok_or("each filter must be an object with exactly one key")?;
    let (op, arg) = obj.iter().next().expect("one key");
    let cmp = match op.as_str() {
        "EQ" => Cmp::Eq,
        "NEQ" => Cmp::Neq,
        "GT" => Cmp::Gt,
        "GTE" => Cmp::Gte,
        "LT" => Cmp::Lt,
        "LTE" => Cmp::Lte,
        "IN" => {
            let (field, vals) = field_arg(op, arg)?;
            let vals = vals.as_array().ok_or("IN needs an array of values")?;
            return Ok(Filter::In(path(field)?, vals.clone()));
        }
        "AND" | "OR" => {
            let parts = arg.as_array().filter(|a| a.len() >= 2).ok_or(format!("{op} needs at least two filters"))?;
            let parts = parts.iter().map(|p| filter(p, depth + 1)).collect::<Result<Vec<_>, _>>()?;
            return Ok(if op == "AND" { Filter::And(parts) } else { Filter::Or(parts) });
        }
        other => return Err(format!("unsupported filter operation {other:?}")),
    };
    let (field, value) = field_arg(op, arg)?;
    Ok(Filter::Cmp(cmp, path(field)?, value.clone()))
}

fn field_arg<'v>(op: &str, arg: &'v Value) -> Result<(&'v str, &'v Value), String> {
    let obj = arg.as_object().filter(|o| o.len() == 1).ok_or(format!("{op} needs one field and its value"))?;
    let (f, v) = obj.iter().next().expect("one key");
    Ok((f.as_str(), v))
}

fn sort(v: &Value) -> Result<Vec<SortKey>, String> {
    let arr = v.as_array().ok_or("sort must be an array")?;
    arr.iter()
        .map(|s| {
            let key = s.get("key").and_then(Value::as_str).ok_or("each sort entry needs a \"key\"")?;
            let descending = match s.get("order").map(|o| o.as_str()) {
                None | Some(Some("ASC")) => false,
                Some(Some("DESC")) => true,
                Some(_) => return Err(format!("invalid sort order for {key:?}: use ASC or DESC")),
            };
            Ok(SortKey { path: path(key)?, descending })
        })
        .collect()
}

fn page(v: &Value) -> Result<(usize, usize), String> {
    let limit = match v.get("limit") {
        None => 0,
        Some(l) => l.as_u64().ok_or("page.limit must be a non-negative integer")? as usize,
    };
    let offset = match v.get("token").and_then(Value::as_str) {
        None | Some("") => 0,
        Some(t) => t.parse().map_err(|_| format!("invalid page token {t:?}"))?,
    };
    Ok((limit, offset))
}

fn lookup<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, p| v.get(p))
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(v)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(v)),
            Filter::In(p, vals) => lookup(v, p).is_some_and(|x| vals.iter().any(|y| equal(x, y))),
            Filter::Cmp(cmp, p, want) => {
                let Some(x) = lookup(v, p) else {
                    return *cmp == Cmp::Neq;
                };
                match cmp {
                    Cmp::Eq => equal(x, want),
                    Cmp::Neq => !equal(x, want),
                    _ => {
                        let Some(o) = comparable(x, want) else {
                            return false;
                        };
                        match cmp {
                            Cmp::Gt => o == Ordering::Greater,
                            Cmp::Gte => o != Ordering::Less,
                            Cmp::Lt => o == Ordering::Less,
                            _ => o != Ordering::Greater,
                        }
                    }
                }
            }
        }
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Ordering of two values of the same kind (numbers or strings); others do not compare.
fn comparable(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// A total order for sorting: missing < null < bool < number < string < others.
fn order(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let rank = |v: Option<&Value>| match v {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(_) => 5,
    };
    match (a, b) {
        (Some(x), Some(y)) => comparable(x, y).unwrap_or_else(|| rank(a).cmp(&rank(b))),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn got(key: &str, v: &str) -> Got {
        Got { key: key.into(), value: Some(Bytes::from(v.to_string())), etag: "1".into(), metadata: Default::default() }
    }

    fn people() -> Vec<Got> {
        vec![
            got("1", r#"{"person":{"org":"Dev Ops","id":1036},"city":"Seattle","state":"WA"}"#),
            got("2", r#"{"person":{"org":"Hardware","id":1028},"city":"Portland","state":"OR"}"#),
            got("3", r#"{"person":{"org":"Finance","id":1071},"city":"Sacramento","state":"CA"}"#),
            got("4", r#"{"person":{"org":"Dev Ops","id":1042},"city":"Spokane","state":"WA"}"#),
            got("5", r#"{"person":{"org":"Dev Ops","id":1007},"city":"San Francisco","state":"CA"}"#),
            got("6", "not json"),
        ]
    }

    fn keys(q: &str) -> (Vec<String>, Option<String>) {
        let page = Query::parse(q.as_bytes()).unwrap().run(people(), usize::MAX).unwrap();
        (page.results.into_iter().map(|g| g.key).collect(), page.token)
    }

    #[test]
    fn filters_sorts_and_pages() {
        assert_eq!(keys(r#"{"filter":{"EQ":{"state":"CA"}}}"#).0, ["3", "5"]);
        let q = r#"{"filter":{"OR":[{"EQ":{"person.org":"Dev Ops"}},{"AND":[{"EQ":{"person.org":"Finance"}},
                   {"IN":{"state":["CA","WA"]}}]}]},"sort":[{"key":"state","order":"DESC"},{"key":"person.id"}]}"#;
        assert_eq!(keys(q).0, ["1", "4", "5", "3"]);
        assert_eq!(keys(r#"{"filter":{"GT":{"person.id":1036}}}"#).0, ["3", "4"]);
        assert_eq!(keys(r#"{"filter":{"LTE":{"person.id":1028}}}"#).0, ["2", "5"]);
        assert_eq!(keys(r#"{"filter":{"NEQ":{"state":"WA"}}}"#).0, ["2", "3", "5", "6"]);
        assert_eq!(keys(r#"{"filter":{"EQ":{"person.id":1007.0}}}"#).0, ["5"]);
        assert_eq!(keys(r#"{}"#).0.len(), 6);
        let (first, token) = keys(r#"{"sort":[{"key":"person.id"}],"page":{"limit":2}}"#);
        assert_eq!((first, token.as_deref()), (vec!["6".to_string(), "5".into()], Some("2")));
        let (rest, token) = keys(r#"{"sort":[{"key":"person.id"}],"page":{"limit":10,"token":"4"}}"#);
        assert_eq!((rest, token), (vec!["4".to_string(), "3".into()], None));
    }

    #[test]
    fn pages_stay_within_the_byte_limit() {
        let q = |text: &str| Query::parse(text.as_bytes()).unwrap();
        // Each of people()'s rows is 60 to 90 bytes: 200 bytes hold two of them.
        let page = q(r#"{"page":{"limit":5}}"#).run(people(), 200).unwrap();
        assert_eq!((page.results.len(), page.token.as_deref()), (2, Some("2")));
        let page = q(r#"{"page":{"limit":5,"token":"2"}}"#).run(people(), 200).unwrap();
        assert_eq!((page.results.len(), page.token.as_deref()), (2, Some("4")));
        // One row over the limit still comes, alone: paging always moves on.
        let page = q(r#"{"page":{"limit":5}}"#).run(people(), 1).unwrap();
        assert_eq!((page.results.len(), page.token.as_deref()), (1, Some("1")));
        // Without a page limit, results that do not fit are refused, not cut.
        let e = q("{}").run(people(), 200).err().expect("refused");
        assert!(matches!(e, Error::TooLarge(_)), "{e:?}");
        assert_eq!(q("{}").run(people(), 10_000).unwrap().results.len(), 6);
    }

    #[test]
    fn rejects_malformed_queries() {
        let deep =
            format!(r#"{{"filter":{}{{"EQ":{{"a":1}}}}{}}}"#, r#"{"AND":[{"EQ":{"a":1}},"#.repeat(40), "]}".repeat(40));
        for bad in [
            "",
            "[]",
            "{",
            r#"{"filter":{"EQ":{"a":1},"NEQ":{"b":2}}}"#,
            r#"{"filter":{"AND":[{"EQ":{"a":1}}]}}"#,
            r#"{"filter":{"LIKE":{"a":1}}}"#,
            r#"{"filter":{"IN":{"a":1}}}"#,
            r#"{"filter":{"EQ":{"a..b":1}}}"#,
            r#"{"sort":[{"key":"a","order":"UP"}]}"#,
            r#"{"sort":{"key":"a"}}"#,
            r#"{"page":{"limit":-1}}"#,
            r#"{"page":{"token":"x"}}"#,
            r#"{"select":1}"#,
            &deep,
        ] {
            assert!(Query::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
