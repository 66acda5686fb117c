//! The modules' imports run one way: `startup` builds the app from `routes`, `auth` and
//! `state`, and none of them imports `startup` back. A circle here is how `AppState` came to
//! be reachable only through the code that builds it.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read api/src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_module_imports_startup_and_state_imports_no_route() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    for file in files {
        let name = file.strip_prefix(&root).expect("under src");
        let text = fs::read_to_string(&file).expect("read source");
        if !matches!(name.to_str(), Some("startup.rs" | "lib.rs")) {
            assert!(!text.contains("crate::startup"), "{name:?} imports startup");
        }
        if matches!(name.to_str(), Some("state.rs" | "health_probe.rs")) {
            assert!(!text.contains("crate::routes"), "{name:?} imports a route");
        }
    }
}
