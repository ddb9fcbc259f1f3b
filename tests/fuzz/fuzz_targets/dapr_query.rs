//! Dapr's query language (`POST /v1.0-alpha1/state/{store}/query`): parsed, then run over a
//! few documents (filters, sorting, paging tokens).

#![no_main]

use libfuzzer_sys::fuzz_target;
use statenode::dapr::query::Query;
use statenode::dapr::Got;

fn items() -> Vec<Got> {
    let docs = [
        r#"{"person":{"org":"Dev Ops","id":1036},"state":"WA"}"#,
        r#"{"person":{"org":"Finance","id":1071},"state":"CA","tags":[1,"a",null]}"#,
        r#"[1,2,3]"#,
        r#""just a string""#,
        "not json",
    ];
    let got = |(i, d): (usize, &&str)| Got {
        key: format!("k{i}"),
        value: Some(bytes::Bytes::copy_from_slice(d.as_bytes())),
        etag: (i + 1).to_string(),
        metadata: Default::default(),
    };
    docs.iter().enumerate().map(got).collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = Query::parse(data) {
        for max_bytes in [usize::MAX, 64] {
            if let Ok(page) = q.run(items(), max_bytes) {
                assert!(page.results.len() <= 5);
            }
        }
    }
});
