//! The docs stand alone: every link in README, ARCHITECTURE, CHANGELOG, BENCHMARKS and docs/
//! points at a file of this repository (and, with `#`, a heading there) or a public URL.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GitHub's heading anchors: lower case, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// Every `](target)` of a Markdown text, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_doc_link_resolves_inside_the_repository() {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "CHANGELOG.md",
        "BENCHMARKS.md",
        "clients/js/README.md",
    ]
    .iter()
    .map(|f| root().join(f))
    .collect();
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let repo = root().canonicalize().unwrap();
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in links(&text) {
            if link.starts_with("https://") || link.starts_with("http://") {
                if link.contains("localhost") || link.contains("127.0.0.1") {
                    continue;
                }
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(path)
            };
            let Ok(target) = target.canonicalize() else {
                bad.push(format!("{}: {link} (no such file)", file.display()));
                continue;
            };
            if !target.starts_with(&repo) {
                bad.push(format!(
                    "{}: {link} (outside the repository)",
                    file.display()
                ));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let heads = anchors(&std::fs::read_to_string(&target).unwrap());
                if !heads.contains(&anchor.to_string()) {
                    bad.push(format!("{}: {link} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn user_facing_docs_use_users_words() {
    for file in [
        "README.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
        "CHANGELOG.md",
        "docs/reference.md",
        "clients/js/README.md",
    ] {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap()
            .to_lowercase();
        for word in [
            "round 1",
            "round 2",
            "round 3",
            "this round",
            "issue #",
            "../shared",
        ] {
            assert!(!text.contains(word), "{file} says {word:?}");
        }
    }
}
