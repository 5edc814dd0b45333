//! The one-way architecture, checked: every `crate::` path in `src/` may only name a top-level
//! module declared *before* its own module in `src/lib.rs`. So there is no cycle among the
//! top-level modules, and nothing below `http` imports it. Adding `use crate::http::...` to
//! `policy` (or any upward import) fails this test with the file and the line. It also keeps
//! every file under src/ small enough to read in one sitting (500 lines, functions of 80).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules in the order `lib.rs` declares them: the allowed direction.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("pub(crate) mod "))?;
            Some(rest.trim_end_matches(';').to_owned())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/policy/admission.rs` → `policy`).
fn owner(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The module path of a file below `src/` (`policy/admission.rs` → `[policy, admission]`,
/// `policy/mod.rs` → `[policy]`), the base `super::` climbs from.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap_or(file);
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.strip_suffix(".rs").unwrap_or(&last).to_owned();
        if stem != "mod" && stem != "lib" && stem != "main" {
            parts.push(stem);
        }
    }
    parts
}

fn ident(text: &str) -> String {
    text.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The first segments of the items of a `{...}` group that starts `text` (after the `{`), at any
/// depth of nesting and across lines: `{a, b::{c, d}}` → `a`, `b`.
fn group_items(text: &str) -> Vec<String> {
    let mut items = vec![ident(text)];
    let mut depth = 0usize;
    for (i, ch) in text.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(ident(&text[i + 1..])),
            _ => {}
        }
    }
    items.retain(|s| !s.is_empty());
    items
}

/// The top-level modules named by `crate::` paths in `code` of the module at `path`, and by
/// `super::` paths that climb to the crate root, with line numbers. Line comments are skipped
/// (doc links are not imports); `{...}` groups are expanded, across lines too.
fn crate_paths(path: &[String], code: &str) -> Vec<(usize, String)> {
    let text: String =
        code.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n");
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let before = text[..at].chars().last();
        let starts_path = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let (climbed, to_root) = if starts_path && rest.starts_with("crate::") {
            ("crate::".len(), true)
        } else if starts_path && rest.starts_with("super::") {
            let mut n = 0;
            while rest[n * "super::".len()..].starts_with("super::") {
                n += 1;
            }
            (n * "super::".len(), n >= path.len())
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let after = &rest[climbed..];
        if to_root {
            let names = match after.strip_prefix('{') {
                Some(group) => group_items(group),
                None => vec![ident(after)],
            };
            found.extend(names.into_iter().filter(|n| !n.is_empty()).map(|n| (line_of(at), n)));
        }
        at += climbed;
    }
    found
}

/// Every import that goes sideways-up or up the layer order, as "file:line: a imports b".
fn violations(layers: &[String], files: &[(PathBuf, String)]) -> Vec<String> {
    let rank = |m: &str| layers.iter().position(|l| l == m);
    let mut out = Vec::new();
    for (file, code) in files {
        let Some(me) = owner(file) else { continue };
        let my_rank = rank(&me).unwrap_or_else(|| panic!("{} is not declared in lib.rs", file.display()));
        for (line, target) in crate_paths(&module_path(file), code) {
            if target == me {
                continue;
            }
            match rank(&target) {
                Some(r) if r < my_rank => {}
                Some(_) => out.push(format!("{}:{line}: {me} imports {target}, a later layer", file.display())),
                None => out.push(format!("{}:{line}: {me} names crate::{target}, not a module", file.display())),
            }
        }
    }
    out
}

fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files.into_iter().map(|f| (f.clone(), std::fs::read_to_string(&f).unwrap())).collect()
}

#[test]
fn imports_only_go_down_the_layers() {
    let layers = layers();
    for expected in ["units", "config", "snapshot", "policy", "store", "app", "http", "server"] {
        assert!(layers.contains(&expected.to_owned()), "lib.rs does not declare {expected}: {layers:?}");
    }
    let bad = violations(&layers, &sources());
    assert!(bad.is_empty(), "imports against the layer order of src/lib.rs:\n{}", bad.join("\n"));
}

/// Every file under src/ belongs to a declared module, so none escapes the check.
#[test]
fn every_file_is_in_a_declared_layer() {
    let layers: BTreeSet<String> = layers().into_iter().collect();
    for (file, _) in sources() {
        if let Some(m) = owner(&file) {
            assert!(layers.contains(&m), "{} belongs to undeclared module {m}", file.display());
        }
    }
}

/// The check itself catches what it must: an upward import, a grouped one, and a cycle.
#[test]
fn the_check_catches_upward_imports() {
    let layers = layers();
    let policy = src().join("policy/admission.rs");
    let planted = |code: &str| violations(&layers, &[(policy.clone(), code.to_owned())]);
    assert_eq!(planted("use crate::http::AppState;\n").len(), 1);
    assert_eq!(planted("use crate::{config::Config, app::AppState, store::Store};\n").len(), 2);
    assert!(planted("use crate::config::Config;\nuse crate::snapshot::Snapshot;\n").is_empty());
    assert!(planted("/// See [`crate::http::app`].\n").is_empty(), "doc links are not imports");
    // A group over several lines, nested groups, and `super::` climbing to the crate root.
    assert_eq!(planted("use crate::{\n    config::Config,\n    http::{app, AppState},\n};\n").len(), 1);
    assert_eq!(planted("use crate::{config::{Config, Dur}, app::AppState};\n").len(), 1);
    assert_eq!(planted("use super::super::http::app;\n").len(), 1);
    assert!(planted("use super::verdict::Verdict;\n").is_empty(), "a sibling is not a layer");
    let policy_mod = src().join("policy/mod.rs");
    assert_eq!(violations(&layers, &[(policy_mod, "use super::http::app;\n".to_owned())]).len(), 1);
    // Two modules importing each other: at least one of the two arrows is upward.
    let store = src().join("store.rs");
    let cycle = violations(
        &layers,
        &[
            (store, "use crate::leases::Lease;\n".to_owned()),
            (src().join("leases.rs"), "use crate::store::Store;\n".to_owned()),
        ],
    );
    assert_eq!(cycle.len(), 1, "{cycle:?}");
}

/// Longest file under src/, in lines (tests inside a file count).
const MAX_FILE_LINES: usize = 500;
/// Longest function, in lines from its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 80;

/// A line without its string and char literals and its line comment, so braces inside them are
/// not counted.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            // A char literal ('{', '\''), not a lifetime ('a): closed within three characters.
            '\'' if matches!(chars.clone().nth(1), Some('\'')) || chars.peek() == Some(&'\\') => {
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Functions of `code` longer than `max` lines, as (line of the `fn`, length).
fn long_functions(code: &str, max: usize) -> Vec<(usize, usize)> {
    let lines: Vec<String> = code.lines().map(code_of).collect();
    let is_fn = |l: &str| {
        let mut words = l
            .split_whitespace()
            .skip_while(|w| w.starts_with("pub") || ["async", "const", "unsafe", "extern", "\"C\""].contains(w));
        words.next() == Some("fn")
    };
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !is_fn(line) {
            continue;
        }
        let mut depth = 0i64;
        let mut opened = false;
        for (j, l) in lines.iter().enumerate().skip(i) {
            if !opened && l.contains(';') && !l.contains('{') {
                break; // a declaration without a body
            }
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                if j - i + 1 > max {
                    out.push((i + 1, j - i + 1));
                }
                break;
            }
        }
    }
    out
}

/// Every file under src/ can be read in one sitting: at most 500 lines, no function over 80.
#[test]
fn files_and_functions_are_small_enough_to_read() {
    let mut bad = Vec::new();
    for (file, code) in sources() {
        let n = code.lines().count();
        if n > MAX_FILE_LINES {
            bad.push(format!("{}: {n} lines (at most {MAX_FILE_LINES})", file.display()));
        }
        for (line, len) in long_functions(&code, MAX_FN_LINES) {
            bad.push(format!("{}:{line}: a function of {len} lines (at most {MAX_FN_LINES})", file.display()));
        }
    }
    assert!(bad.is_empty(), "too long to read in one sitting:\n{}", bad.join("\n"));
}

/// The length check counts what it must: a long body, braces in strings and chars ignored, a
/// nested function inside its parent, a declaration without a body skipped.
#[test]
fn the_length_check_counts_function_bodies() {
    let body = |n: usize| "    let x = 1;\n".repeat(n);
    let long = format!("pub(crate) async fn f() {{\n{}}}\n", body(79));
    assert_eq!(long_functions(&long, 80), vec![(1, 81)]);
    let short = format!("fn f() {{\n{}}}\n", body(78));
    assert!(long_functions(&short, 80).is_empty());
    let tricky = "fn f() {\n    let s = \"}}}\";\n    let c = '}';\n    // }\n}\nfn g() -> u32 {\n    1\n}\n";
    assert!(long_functions(tricky, 5).is_empty(), "braces in literals and comments are not code");
    assert_eq!(long_functions(tricky, 4), vec![(1, 5)]);
    assert!(long_functions("trait T {\n    fn f(&self);\n}\n", 1).is_empty());
    let lifetime = "fn f<'a>(x: &'a str) -> &'a str {\n    x\n}\n";
    assert_eq!(long_functions(lifetime, 2), vec![(1, 3)]);
}

/// The sibling files of `dir` (`app`, `http`) in the order its `mod.rs` declares them: the
/// allowed direction inside it.
fn file_order(dir: &str) -> Vec<String> {
    let text = std::fs::read_to_string(src().join(dir).join("mod.rs")).unwrap();
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_owned())
        })
        .filter(|m| m != "tests")
        .collect()
}

/// The code of a file without its unit tests (`#[cfg(test)] mod tests { ... }` at the end):
/// tests may use anything.
fn without_tests(code: &str) -> &str {
    code.find("#[cfg(test)]\nmod tests {").map_or(code, |at| &code[..at])
}

/// Every use of a sibling file inside `dir` that goes up its order, every use of its `mod.rs`
/// (the composition, above every file) by a file below it, and, for `app`, every `impl
/// AppState` outside `mod.rs`. As "file:line: what".
fn sibling_violations(dir: &str, order: &[String], files: &[(PathBuf, String)]) -> Vec<String> {
    let base = src().join(dir);
    let mut out = Vec::new();
    for (file, code) in files {
        let Ok(rel) = file.strip_prefix(&base) else { continue };
        let Some(me) = rel.to_str().and_then(|r| r.strip_suffix(".rs")).filter(|m| !m.contains('/')) else {
            continue;
        };
        if me == "mod" {
            continue;
        }
        let my_rank = order.iter().position(|m| m == me).unwrap_or(usize::MAX);
        let code = without_tests(code);
        let text: String =
            code.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n");
        let line_of = |at: usize| text[..at].matches('\n').count() + 1;
        let crate_dir = format!("crate::{dir}::");
        for (at, _) in text.match_indices("super::").chain(text.match_indices(crate_dir.as_str())) {
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::` climbs out of `dir`: the top-level check's business
            }
            let after = text[at..].split_once("::").map_or("", |(_, a)| a);
            let after =
                if text[at..].starts_with("crate::") { after.split_once("::").map_or("", |(_, a)| a) } else { after };
            if after.starts_with("super::") {
                continue;
            }
            let names = match after.strip_prefix('{') {
                Some(group) => group_items(group),
                None => vec![ident(after)],
            };
            for name in names.into_iter().filter(|n| !n.is_empty() && n != "self") {
                match order.iter().position(|m| *m == name) {
                    Some(r) if r < my_rank => {}
                    Some(_) => out.push(format!(
                        "{}:{}: {dir}/{me} uses {dir}/{name}, declared after it",
                        file.display(),
                        line_of(at)
                    )),
                    None => out.push(format!(
                        "{}:{}: {dir}/{me} uses {name} of {dir}/mod.rs, the composition above it",
                        file.display(),
                        line_of(at)
                    )),
                }
            }
        }
        if dir == "app" && text.contains("impl AppState") {
            out.push(format!("{}: implements AppState outside app/mod.rs", file.display()));
        }
    }
    out
}

/// Inside `src/app/` and `src/http/` the files are ordered as the top level is: no two call each
/// other both ways, and only `mod.rs` composes them.
#[test]
fn files_inside_app_and_http_only_use_earlier_ones() {
    let files = sources();
    for dir in ["app", "http"] {
        let order = file_order(dir);
        assert!(order.len() > 5, "{dir}/mod.rs declares {order:?}");
        let bad = sibling_violations(dir, &order, &files);
        assert!(bad.is_empty(), "uses against the file order of src/{dir}/mod.rs:\n{}", bad.join("\n"));
    }
}

/// The file-order check catches a planted two-way call, a use of the composition, an `impl
/// AppState` outside it, and leaves unit tests and earlier files alone.
#[test]
fn the_file_order_check_catches_two_way_calls() {
    let order = file_order("app");
    let ledger = src().join("app/ledger.rs");
    let queue = src().join("app/queue.rs");
    let check = |files: &[(PathBuf, &str)]| {
        let files: Vec<(PathBuf, String)> = files.iter().map(|(p, c)| (p.clone(), (*c).to_owned())).collect();
        sibling_violations("app", &order, &files)
    };
    // The queue uses the ledger (allowed); the ledger calling back into the queue is not.
    assert!(check(&[(queue.clone(), "use super::ledger::Ledger;\n")]).is_empty());
    let two_way =
        check(&[(queue.clone(), "use super::ledger::Ledger;\n"), (ledger.clone(), "use super::queue::Queue;\n")]);
    assert_eq!(two_way.len(), 1, "{two_way:?}");
    assert!(two_way[0].contains("app/ledger uses app/queue"), "{two_way:?}");
    assert_eq!(check(&[(ledger.clone(), "fn f() { super::queue::dispatcher(); }\n")]).len(), 1);
    assert_eq!(check(&[(ledger.clone(), "use super::{inputs::Inputs, queue::Queue};\n")]).len(), 1);
    assert_eq!(check(&[(ledger.clone(), "use crate::app::queue::Queue;\n")]).len(), 1);
    assert_eq!(check(&[(ledger.clone(), "use super::AppState;\n")]).len(), 1, "mod.rs is above every file");
    assert_eq!(check(&[(ledger.clone(), "impl AppState {\n}\n")]).len(), 1);
    assert!(check(&[(ledger.clone(), "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n")]).is_empty());
    assert!(check(&[(ledger, "use super::super::config::Config;\n")]).is_empty(), "the top level's business");
}
