//! The documentation is checked like code (issue 22), so it cannot drift from the binaries:
//!
//! * every environment variable the Rust sources read is a row of docs/configuration.md, and
//!   every row there is read by them;
//! * every flag in `--help` of `billing` (and each of its commands) and of `migration` (and
//!   each of its commands) is documented in docs/configuration.md;
//! * every relative link in README.md, CHANGELOG.md and docs/ names a file that exists, and a
//!   `#fragment` into a Markdown file names one of its headings;
//! * README.md stays at most 250 lines.
//!
//! What the variable scan reads: every `.rs` file of the workspace outside `target/` and hidden
//! folders (this file excepted), with `//` comment lines skipped. It finds
//! * clap's `env = "NAME"` attributes;
//! * `env::var("NAME")` and `env::var_os("NAME")`;
//! * `env::var(X)` / `env::var_os(X)` with a constant `X`, resolved through `const X: &str =
//!   "NAME"` anywhere in the sources; when `X` is instead a parameter of the enclosing function
//!   (`fn env_number(name: …)`), the calls of that function are read the same way, and one
//!   whose argument cannot be resolved fails the test;
//! * tracing-subscriber's `from_default_env`, which reads `RUST_LOG`.
//!
//! Compile-time `env!(…)` and the shell scripts in `.ci/` are not part of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

/// Variables the code reads that are not settings of ours, with the reason.
const NOT_SETTINGS: &[(&str, &str)] = &[(
    "PATH",
    "tests pass it on to the binaries they start with a cleared environment",
)];

const README_MAX_LINES: usize = 250;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Environment variables

/// Every `.rs` file of the workspace but build output, hidden folders and this file.
fn rust_sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_sources(&path, found);
            }
        } else if name.ends_with(".rs") && path != workspace().join("tests/docs.rs") {
            found.push(path);
        }
    }
}

/// A source file with its `//` comment lines blanked (doc comments quote calls they do not make).
struct Source {
    path: PathBuf,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut paths = Vec::new();
    rust_sources(workspace(), &mut paths);
    assert!(
        paths.len() > 20,
        "the scan found too few sources: {paths:?}"
    );
    paths
        .into_iter()
        .map(|path| {
            // Blanked rather than dropped, so that line numbers stay the file's.
            let code = read(&path)
                .lines()
                .map(|line| {
                    if line.trim_start().starts_with("//") {
                        ""
                    } else {
                        line
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            Source { path, code }
        })
        .collect()
}

fn is_variable_name(name: &str) -> bool {
    name.len() > 1
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Each byte offset where `needle` occurs in `haystack`.
fn offsets<'a>(haystack: &'a str, needle: &'a str) -> impl Iterator<Item = usize> + 'a {
    haystack.match_indices(needle).map(|(at, _)| at)
}

/// A string literal's content at the start of `text` (after spaces), if there is one.
fn literal(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.split_once('"').map(|(content, _)| content)
}

/// The identifier (or `path::to::IDENT`, last segment kept) at the start of `text`.
fn identifier(text: &str) -> Option<&str> {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let path = &text[..end];
    let last = path.rsplit("::").next()?;
    (!last.is_empty() && !last.starts_with(|c: char| c.is_ascii_digit())).then_some(last)
}

/// `const NAME: &str = "VALUE";` anywhere in the sources.
fn string_constants(sources: &[Source]) -> BTreeMap<String, String> {
    let mut constants = BTreeMap::new();
    for source in sources {
        for at in offsets(&source.code, "const ") {
            let rest = &source.code[at + "const ".len()..];
            let Some((name, rest)) = rest.split_once(':') else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix("&") else {
                continue;
            };
            let rest = rest.trim_start().trim_start_matches("'static").trim_start();
            let Some(rest) = rest.strip_prefix("str") else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix('=') else {
                continue;
            };
            if let Some(value) = literal(rest) {
                constants.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }
    constants
}

/// The name of the function whose body contains byte `at` (the last `fn name(` before it).
fn enclosing_function(code: &str, at: usize) -> Option<&str> {
    let before = &code[..at];
    let start = before.rfind("fn ")? + "fn ".len();
    let rest = &before[start..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    Some(&rest[..end])
}

fn line_of(code: &str, at: usize) -> usize {
    code[..at].matches('\n').count() + 1
}

/// Every environment variable the sources read, with one place that reads it.
fn variables_read() -> BTreeMap<String, String> {
    let sources = sources();
    let constants = string_constants(&sources);
    let mut read: BTreeMap<String, String> = BTreeMap::new();
    let mut unresolved = Vec::new();
    // Functions that read the variable named by their first argument.
    let mut readers: BTreeSet<String> = BTreeSet::new();
    let mut note = |name: &str, source: &Source, at: usize| {
        read.entry(name.to_owned())
            .or_insert_with(|| format!("{}:{}", source.path.display(), line_of(&source.code, at)));
    };
    for source in &sources {
        let code = &source.code;
        for at in offsets(code, "env = \"") {
            if let Some(name) = literal(&code[at + "env = ".len()..]) {
                note(name, source, at);
            }
        }
        for call in ["env::var(", "env::var_os("] {
            for at in offsets(code, call) {
                let argument = &code[at + call.len()..];
                if let Some(name) = literal(argument) {
                    note(name, source, at);
                } else if let Some(name) = identifier(argument).and_then(|id| constants.get(id)) {
                    note(name, source, at);
                } else if let Some(function) = enclosing_function(code, at) {
                    readers.insert(function.to_owned());
                } else {
                    unresolved.push(format!("{}:{}", source.path.display(), line_of(code, at)));
                }
            }
        }
        for call in ["from_default_env(", "try_from_default_env("] {
            if let Some(at) = code.find(call) {
                note("RUST_LOG", source, at);
            }
        }
    }
    for source in &sources {
        let code = &source.code;
        for reader in &readers {
            let call = format!("{reader}(");
            for at in offsets(code, &call) {
                // Not the definition, and not a longer name ending in this one.
                let before = &code[..at];
                if before.ends_with("fn ")
                    || before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                {
                    continue;
                }
                let argument = &code[at + call.len()..];
                let name = literal(argument).or_else(|| {
                    identifier(argument)
                        .and_then(|id| constants.get(id))
                        .map(String::as_str)
                });
                match name {
                    Some(name) => note(name, source, at),
                    None => unresolved.push(format!(
                        "{}:{} ({reader})",
                        source.path.display(),
                        line_of(code, at)
                    )),
                }
            }
        }
    }
    assert!(
        unresolved.is_empty(),
        "cannot tell which environment variable these read; name it in a literal or a \
         `const NAME: &str`: {unresolved:#?}"
    );
    read.retain(|name, _| is_variable_name(name));
    read
}

/// The Markdown tables of a page, each as its header cells and its rows' cells.
fn tables(page: &str) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let mut tables = Vec::new();
    let mut current: Option<(Vec<String>, Vec<Vec<String>>)> = None;
    for line in page.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            if let Some(table) = current.take() {
                tables.push(table);
            }
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect();
        match &mut current {
            None => current = Some((cells, Vec::new())),
            Some(_)
                if cells
                    .iter()
                    .all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) => {}
            Some((_, rows)) => rows.push(cells),
        }
    }
    tables.extend(current);
    tables
}

/// The variables docs/configuration.md documents: the first cell of each row of its tables
/// whose first header is `variable` or `name`, in any case (`—` for a flag without one).
/// Tables headed otherwise (the tools' variables) are not counted.
fn variables_documented() -> BTreeSet<String> {
    let page = read(&workspace().join("docs/configuration.md"));
    let mut documented = BTreeSet::new();
    for (header, rows) in tables(&page) {
        let first = header.first().map(|cell| cell.to_lowercase());
        if !matches!(first.as_deref(), Some("variable" | "name")) {
            continue;
        }
        for row in rows {
            let cell = row.first().map(String::as_str).unwrap_or("");
            for name in cell.split(|c: char| c == '`' || c == ',' || c.is_whitespace()) {
                if is_variable_name(name) {
                    documented.insert(name.to_owned());
                }
            }
        }
    }
    documented
}

#[test]
fn every_variable_the_code_reads_is_documented_and_every_documented_one_is_read() {
    let mut read = variables_read();
    for (name, why) in NOT_SETTINGS {
        assert!(
            read.remove(*name).is_some(),
            "{name} ({why}) is no longer read"
        );
    }
    let documented = variables_documented();
    let undocumented: Vec<String> = read
        .iter()
        .filter(|(name, _)| !documented.contains(*name))
        .map(|(name, at)| format!("{name} (read at {at})"))
        .collect();
    let unread: Vec<&String> = documented
        .iter()
        .filter(|name| !read.contains_key(*name))
        .collect();
    assert!(
        undocumented.is_empty() && unread.is_empty(),
        "read by the code but not a row of docs/configuration.md: {undocumented:#?}\n\
         rows of docs/configuration.md that no code reads: {unread:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Flags

/// Flags as `--help` lists them: `-u, --database-url <URL>`, `--bind <BIND>`, `-h, --help`.
fn flags_in_help(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        let spec = line.split("  ").next().unwrap_or(line);
        for part in spec.split(", ") {
            let flag = part.split([' ', '=', '[', '<']).next().unwrap_or("");
            if flag.starts_with('-') && flag.len() > 1 {
                flags.insert(flag.to_owned());
            }
        }
    }
    flags
}

/// The subcommands `--help` lists under `Commands:` (clap's own `help` left out).
fn commands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        // A wrapped description would be indented further than a command's name.
        .filter(|line| !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn billing_help(args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command.env_clear().args(args).arg("--help");
    let output = command.output().expect("run billing --help");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "billing {args:?} --help: {text}");
    text
}

/// The flags of a clap command and of each of its subcommands, by where they appear.
fn flags_of(command: &clap::Command, at: &str, found: &mut BTreeMap<String, String>) {
    for arg in command.get_arguments() {
        let names = arg
            .get_long()
            .map(|long| format!("--{long}"))
            .into_iter()
            .chain(arg.get_short().map(|short| format!("-{short}")));
        for flag in names {
            found.entry(flag).or_insert_with(|| at.to_owned());
        }
    }
    for sub in command.get_subcommands() {
        flags_of(sub, &format!("{at} {}", sub.get_name()), found);
    }
}

/// Every flag of `billing` and `migration`, and where it was found.
fn flags_of_the_binaries() -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let top = billing_help(&[]);
    let commands = commands_in_help(&top);
    assert!(commands.contains(&"stripe-sync".to_owned()), "{top}");
    for flag in flags_in_help(&top) {
        flags.entry(flag).or_insert_with(|| "billing".to_owned());
    }
    for command in &commands {
        for flag in flags_in_help(&billing_help(&[command])) {
            flags
                .entry(flag)
                .or_insert_with(|| format!("billing {command}"));
        }
    }
    let mut migration = migration::cli::Cli::command();
    migration.build();
    flags_of(&migration, "migration", &mut flags);
    flags
}

/// Every `-x` and `--flag` written as code on docs/configuration.md.
fn flags_documented() -> BTreeSet<String> {
    let page = read(&workspace().join("docs/configuration.md"));
    let mut documented = BTreeSet::new();
    for line in page.lines() {
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.starts_with('-') {
                documented.extend(flags_in_help(&format!("  {span}")));
            }
        }
    }
    documented
}

#[test]
fn every_flag_of_the_binaries_is_documented() {
    let flags = flags_of_the_binaries();
    for expected in [
        "--bind",
        "--email",
        "--stripe-api-key",
        "--connect-timeout",
        "--backend",
    ] {
        assert!(
            flags.contains_key(expected),
            "the scan missed {expected}: {flags:?}"
        );
    }
    let documented = flags_documented();
    let missing: Vec<String> = flags
        .iter()
        .filter(|(flag, _)| !documented.contains(*flag))
        .map(|(flag, at)| format!("{flag} ({at})"))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from docs/configuration.md: {missing:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Links

/// README.md, CHANGELOG.md and every Markdown file under docs/.
fn pages() -> Vec<PathBuf> {
    fn under(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read docs/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                under(&path, found);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    let mut pages = vec![
        workspace().join("README.md"),
        workspace().join("CHANGELOG.md"),
    ];
    under(&workspace().join("docs"), &mut pages);
    pages
}

/// The page's text outside fenced code blocks, line by line, with inline code spans blanked.
fn prose(page: &str) -> Vec<String> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            lines.push(String::new());
            continue;
        }
        if fenced {
            lines.push(String::new());
            continue;
        }
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        lines.push(kept);
    }
    lines
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens; a repeated
/// heading gets `-1`, `-2`, ...
fn anchors(page: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// Each `[text](target)` / `![alt](target)` of a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        targets.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    targets
}

fn is_external(target: &str) -> bool {
    let scheme_end = target.find(':');
    let slash = target.find('/');
    matches!(scheme_end, Some(colon) if slash.is_none_or(|s| colon < s)
        && target[..colon].chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)))
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a page's folder");
        for (number, line) in prose(&text).iter().enumerate() {
            for target in link_targets(line) {
                if target.is_empty() || is_external(&target) {
                    continue;
                }
                checked += 1;
                let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
                let file = if path.is_empty() {
                    page.clone()
                } else {
                    dir.join(path)
                };
                let at = format!("{}:{}: {target}", page.display(), number + 1);
                if !file.exists() {
                    broken.push(format!("{at} (no such file)"));
                } else if !fragment.is_empty()
                    && file.extension().is_some_and(|e| e == "md")
                    && !anchors(&read(&file)).contains(fragment)
                {
                    broken.push(format!("{at} (no such heading)"));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: the scan is broken"
    );
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

// ---------------------------------------------------------------------------------------------
// README

#[test]
fn the_readme_is_a_front_door() {
    let lines = read(&workspace().join("README.md")).lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail into docs/"
    );
}

// ---------------------------------------------------------------------------------------------
// The checks themselves

#[test]
fn the_parsers_read_what_they_should() {
    assert_eq!(
        flags_in_help(
            "  -u, --database-url <DATABASE_URL>  Database URL\n      --bind <BIND>  x\n  -h, --help  Print help"
        ),
        BTreeSet::from(["--bind", "--database-url", "--help", "-h", "-u"].map(str::to_owned))
    );
    assert!(anchors("# A `b`: c\n## m006_billing_fields\n## x\n## x").contains("a-b-c"));
    assert!(anchors("## x\n## x").contains("x-1"));
    assert!(anchors("## m006_billing_fields").contains("m006_billing_fields"));
    assert_eq!(
        link_targets("see [a](b.md#c) and ![d](e.svg)"),
        ["b.md#c", "e.svg"]
    );
    assert!(is_external("https://example.com") && !is_external("docs/a.md"));
    assert_eq!(identifier(" lock::LOCK_WAIT_ENV, 3"), Some("LOCK_WAIT_ENV"));
    assert_eq!(literal(" \"NO_COLOR\")"), Some("NO_COLOR"));
}
