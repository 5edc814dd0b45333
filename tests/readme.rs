//! The front page stays true. README.md's endpoint table (the rows `| METHODS | `PATH` | ... |`
//! under "## Endpoints") lists exactly the paths and methods of the OpenAPI document the real
//! binary serves, plus the routes outside that document named in [`NON_API_ROUTES`] (each with
//! why it is not in the document, and each probed on the running binary so the list cannot name
//! a route that is gone). On a mismatch the failure lists what README.md is missing and what it
//! has extra. README.md also stays a front page, at most 300 lines, and links every `docs/*.md`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::Vramguard;

/// The most lines README.md may have: past its first screen, reference text goes to docs/.
const MAX_README_LINES: usize = 300;

/// Methods a table row may name (an OpenAPI path item's operations, in upper case).
const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"];

/// Routes the router serves that the OpenAPI document does not describe: the method and the path
/// as README.md writes them. A path ending in `/...` stands for a family of routes.
const NON_API_ROUTES: &[(&str, &str)] = &[
    // The live page: HTML for a browser, not an operation of the JSON API (src/http/page.rs).
    ("GET", "/"),
    // The page's embedded files, one route per file of web/; one row stands for all of them.
    ("GET", "/assets/..."),
    // The Prometheus text exposition: scraped by Prometheus, not JSON, outside the versioned API.
    ("GET", "/metrics"),
    // Liveness and readiness probes for supervisors: plain text, outside the versioned API.
    ("GET", "/-/healthy"),
    ("GET", "/-/ready"),
    // The OpenAPI document itself: it describes the API and is not one of its operations.
    ("GET", "/api/v1/openapi.json"),
    // The stats WebSocket: an upgrade to a message stream, which OpenAPI 3.1 cannot describe, so
    // src/http/mod.rs routes it beside the documented API.
    ("GET", "/api/v1/system/stats/ws"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("read README.md")
}

type Routes = BTreeSet<(String, String)>;

/// The (METHOD, PATH) pairs of the table under "## Endpoints", or why the table cannot be read.
/// Each path must have one row, its methods comma-separated.
fn endpoint_table(text: &str) -> Result<Routes, String> {
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim_end() != "## Endpoints")
        .skip(1)
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("# "))
        .collect();
    let mut routes = Routes::new();
    let mut rows_of_path: BTreeMap<String, usize> = BTreeMap::new();
    for line in section.iter().map(|l| l.trim()).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let (Some(methods), Some(path)) = (cells.first(), cells.get(1)) else {
            return Err(format!("a table row without a path cell: {line}"));
        };
        if methods.eq_ignore_ascii_case("method") || methods.starts_with("---") {
            continue;
        }
        let Some(path) = path.strip_prefix('`').and_then(|p| p.strip_suffix('`')) else {
            return Err(format!("the path is not in backticks: {line}"));
        };
        *rows_of_path.entry(path.to_owned()).or_default() += 1;
        for method in methods.split(',').map(str::trim) {
            if !METHODS.contains(&method) {
                return Err(format!("{method:?} is not an HTTP method in upper case: {line}"));
            }
            if !routes.insert((method.to_owned(), path.to_owned())) {
                return Err(format!("{method} {path} is listed twice"));
            }
        }
    }
    if let Some((path, n)) = rows_of_path.iter().find(|(_, n)| **n > 1) {
        return Err(format!("{path} has {n} rows; give each path one row, its methods comma-separated"));
    }
    if routes.is_empty() {
        return Err("no endpoint table rows (`| METHODS | `PATH` | ... |`) under \"## Endpoints\"".to_owned());
    }
    Ok(routes)
}

/// Every operation of an OpenAPI document's `paths`.
fn openapi_routes(doc: &serde_json::Value) -> Routes {
    let paths = doc["paths"].as_object().expect("the OpenAPI document has paths");
    let mut routes = Routes::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for key in item.keys() {
            let method = key.to_ascii_uppercase();
            if METHODS.contains(&method.as_str()) {
                routes.insert((method, path.clone()));
            }
        }
    }
    routes
}

/// What `listed` lacks and what it has beyond `expected`, as one message; `None` when they match.
fn mismatch(expected: &Routes, listed: &Routes) -> Option<String> {
    let missing: Vec<String> = expected.difference(listed).map(|(m, p)| format!("    {m} {p}")).collect();
    let extra: Vec<String> = listed.difference(expected).map(|(m, p)| format!("    {m} {p}")).collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    fn list(v: &[String]) -> String {
        if v.is_empty() { "    (none)".to_owned() } else { v.join("\n") }
    }
    Some(format!(
        "README.md's endpoint table does not match what vramguard serves.\n  \
         missing from README.md (served, not in the table):\n{}\n  \
         extra in README.md (in the table, not served):\n{}\n\
         The served set is the OpenAPI document's paths and methods plus NON_API_ROUTES in tests/readme.rs.",
        list(&missing),
        list(&extra)
    ))
}

/// The table lists exactly what the router serves: the OpenAPI document's operations and the
/// routes outside it.
#[test]
fn readme_endpoint_table_matches_the_router() {
    let vg = Vramguard::start("sample_interval: \"250ms\"\ngpu: { enabled: false }\n", None, &[]);
    let (status, doc) = vg.get_json("/api/v1/openapi.json");
    assert_eq!(status, 200, "GET /api/v1/openapi.json");
    let api = openapi_routes(&doc);
    assert!(!api.is_empty(), "the OpenAPI document lists no operations");

    let (_, page) = vg.get("/");
    for (method, path) in NON_API_ROUTES {
        let route = ((*method).to_owned(), (*path).to_owned());
        assert!(
            !api.contains(&route),
            "{method} {path} is in the OpenAPI document now: remove it from NON_API_ROUTES in tests/readme.rs"
        );
        // A family is probed by a member the page itself links.
        let probe = match path.strip_suffix("...") {
            Some(prefix) => {
                let start = page.find(&format!("\"{prefix}")).unwrap_or_else(|| {
                    panic!("the page at / links nothing under {prefix}, which {path} in NON_API_ROUTES stands for")
                }) + 1;
                let len = page[start..].find('"').expect("a closing quote");
                page[start..start + len].to_owned()
            }
            None => (*path).to_owned(),
        };
        assert_eq!(*method, "GET", "the probe below only sends GET");
        let status = vg.client().get(vg.url(&probe)).send().expect("GET").status().as_u16();
        assert!(
            status != 404 && status != 405,
            "GET {probe} answered {status}: {method} {path} in NON_API_ROUTES is not served any more"
        );
    }

    let expected: Routes =
        api.iter().cloned().chain(NON_API_ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))).collect();
    let listed = endpoint_table(&readme()).unwrap_or_else(|e| panic!("README.md's endpoint table: {e}"));
    if let Some(message) = mismatch(&expected, &listed) {
        panic!("{message}");
    }
}

/// README.md is a front page: short, and a way into every file under docs/.
#[test]
fn readme_is_a_front_page_that_links_every_doc() {
    let text = readme();
    let lines = text.lines().count();
    assert!(
        lines <= MAX_README_LINES,
        "README.md has {lines} lines; at most {MAX_README_LINES} (move reference text to docs/)"
    );

    let docs = root().join("docs");
    let mut names: Vec<String> = std::fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("{}: {e}", docs.display()))
        .map(|e| e.expect("a docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|x| x == "md"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "docs/ has no .md files");
    let unlinked: Vec<&String> = names
        .iter()
        .filter(|n| !text.contains(&format!("](docs/{n})")) && !text.contains(&format!("](docs/{n}#")))
        .collect();
    assert!(unlinked.is_empty(), "docs/ files README.md does not link: {unlinked:?}");

    // And every docs/ file README.md links exists.
    for link in text.split("](docs/").skip(1) {
        let end = link.find([')', '#']).expect("a link ends");
        let file = &link[..end];
        assert!(docs.join(file).is_file(), "README.md links docs/{file}, which does not exist");
    }
}

/// The comparison itself: a row taken out of a table is reported as missing, a row added as
/// extra, and a malformed row as malformed.
#[test]
fn the_table_check_names_what_differs() {
    let table = "# x\n\n## Endpoints\n\n| Method | Path | What it does |\n|---|---|---|\n\
                 | GET, DELETE | `/a` | a |\n| POST | `/b/{id}` | b |\n\n## Next\n\n| GET | `/not-here` | c |\n";
    fn pairs(v: &[(&str, &str)]) -> Routes {
        v.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect()
    }
    let listed = endpoint_table(table).unwrap();
    assert_eq!(listed, pairs(&[("GET", "/a"), ("DELETE", "/a"), ("POST", "/b/{id}")]));
    assert!(mismatch(&listed, &listed).is_none());

    let served = pairs(&[("GET", "/a"), ("DELETE", "/a"), ("GET", "/c")]);
    let message = mismatch(&served, &listed).unwrap();
    let (missing, extra) = message.split_once("extra in README.md").unwrap();
    assert!(missing.contains("GET /c") && !missing.contains("/b/"), "{message}");
    assert!(extra.contains("POST /b/{id}") && !extra.contains("GET /c"), "{message}");

    assert!(endpoint_table("## Endpoints\n\n| get | `/a` | a |\n").unwrap_err().contains("upper case"));
    assert!(endpoint_table("## Endpoints\n\n| GET | /a | a |\n").unwrap_err().contains("backticks"));
    assert!(
        endpoint_table("## Endpoints\n\n| GET | `/a` | a |\n| POST | `/a` | a |\n").unwrap_err().contains("2 rows")
    );
    assert!(endpoint_table("## Endpoints\n\nno table\n").is_err());
}
