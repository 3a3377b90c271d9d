//! Loading configurations: what is accepted, and errors that name the field.

use super::*;

fn check(text: &str) -> Result<Config, String> {
    let source = ConfigSource::Text {
        name: "tools.toml".into(),
        text: text.into(),
    };
    Config::load_with_env(&source, &Overrides::default(), false).map_err(|error| error.to_string())
}

const TOOL: &str = r#"
    [[tools]]
    name = "echo"
    command = ["/bin/echo", "hi"]
    [[tools.outputs]]
    name = "out"
    from = "stdout"
    format = "lines"
    [tools.example]
"#;

/// The example configurations of the executors load (executors are not contacted
/// until a worker starts); a tool whose executor has no section is refused with its
/// name, and a Kubernetes tool cannot take an output from stdout.
#[test]
fn executor_examples_load_and_missing_sections_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        data_dir: Some(dir.path().to_owned()),
        ..Overrides::default()
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let configmap = std::fs::read_to_string(root.join("deploy/kubernetes/configmap.yaml")).unwrap();
    let kubernetes: String = configmap
        .split_once("batchgate.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    let examples = [
        (
            "examples/slurm.toml",
            std::fs::read_to_string(root.join("examples/slurm.toml")).unwrap(),
            None,
        ),
        (
            "examples/container.toml",
            std::fs::read_to_string(root.join("examples/container.toml")).unwrap(),
            Some(("containers", cfg!(feature = "containers"))),
        ),
        (
            "deploy/kubernetes/configmap.yaml",
            kubernetes,
            Some(("kubernetes", cfg!(feature = "kubernetes"))),
        ),
    ];
    for (name, text, feature) in examples {
        let source = ConfigSource::Text {
            name: name.into(),
            text,
        };
        let loaded = Config::load_with_env(&source, &overrides, false);
        match feature {
            // Built without the executor: refused at load, naming the feature.
            Some((feature, false)) => {
                let error = loaded.unwrap_err().to_string();
                assert!(error.contains(&format!("`{feature}` feature")), "{error}");
            }
            _ => {
                let config = loaded.unwrap_or_else(|error| panic!("{name}: {error}"));
                assert_eq!(config.tools.all().count(), 1, "{name}");
            }
        }
    }
    let error = check(&TOOL.replace(
        "command = [\"/bin/echo\", \"hi\"]",
        "command = [\"/bin/echo\", \"hi\"]\n        executor = \"slurm\"",
    ))
    .unwrap_err();
    assert!(
        error.contains("tool `echo@1`") && error.contains("[slurm]"),
        "{error}"
    );
    let error = check(&format!(
        "[kubernetes]\npvc = \"w\"\nwork_dir = \"/w\"\n{}",
        TOOL.replace(
            "command = [\"/bin/echo\", \"hi\"]",
            "command = [\"/bin/echo\", \"hi\"]\n        executor = \"kubernetes\"\n        kubernetes = { image = \"i\" }",
        )
    ))
    .unwrap_err();
    if cfg!(feature = "kubernetes") {
        assert!(error.contains("outputs must be files"), "{error}");
    }
}

/// Object storage named by a binary built without it: refused at load.
#[test]
fn blobs_in_object_storage_need_the_feature() {
    let loaded = check(&format!("blobs = \"s3://bucket/jobs\"\n{TOOL}"));
    if cfg!(feature = "object-store") {
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    } else {
        let error = loaded.unwrap_err();
        assert!(
            error.contains("field `blobs`") && error.contains("--features object-store"),
            "{error}"
        );
    }
}

/// A local tool's program must be an executable file when a worker starts (or
/// `check-config` runs), named with the tool and the field.
#[test]
fn a_local_program_that_is_not_there_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let with = |program: &str| {
        let config = check(&TOOL.replace("/bin/echo", program)).unwrap();
        check_programs(&config.tools, dir.path())
    };
    assert_eq!(with("/bin/echo"), Ok(()));
    assert_eq!(with("echo"), Ok(()));
    for (program, expected) in [
        (
            "/nonexistent/legacy-program",
            "`/nonexistent/legacy-program` is not an executable file",
        ),
        (
            "no-such-program-here",
            "`no-such-program-here` is not an executable file on PATH",
        ),
        ("bin/echo", "`bin/echo` is a relative path"),
        ("PLAIN", "is not an executable file"),
    ] {
        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "not a program").unwrap();
        let program = program.replace("PLAIN", &plain.to_string_lossy());
        let program = program.as_str();
        let error = with(program).unwrap_err();
        assert!(
            error.contains("tool `echo@1`: field `command[0]`") && error.contains(expected),
            "{error}"
        );
    }
    // The demo analyzer is there once a worker has installed it.
    let config = Config::load_with_env(
        &ConfigSource::Demo,
        &Overrides {
            data_dir: Some(dir.path().to_owned()),
            ..Overrides::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(check_programs(&config.tools, dir.path()), Ok(()));
}

/// Loading a configuration (`keys`, `check-config`) writes nothing: the demo program
/// is installed by a worker when it starts.
#[test]
fn loading_the_demo_configuration_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let overrides = Overrides {
        data_dir: Some(data_dir.clone()),
        ..Overrides::default()
    };
    let config = Config::load_with_env(&ConfigSource::Demo, &overrides, false).unwrap();
    assert!(!data_dir.exists());
    let analyzer = config.tools.resolve("analyzer").unwrap();
    let program = analyzer.command[0].render(&crate::tools::argv::ArgValues {
        workdir: dir.path(),
        inputs: &Default::default(),
        outputs: &Default::default(),
        control: None,
        params: &Default::default(),
    });
    assert!(program
        .unwrap()
        .starts_with(&*data_dir.join("bin").to_string_lossy()));
}

#[test]
fn cors_origins_must_be_origins() {
    assert!(check(&format!(
        "cors_origins = [\"https://a.example:8443\", \"*\"]\n{TOOL}"
    ))
    .is_ok());
    for bad in ["https://a.example/", "a.example", "https://a.example/app"] {
        let error = check(&format!("cors_origins = [\"{bad}\"]\n{TOOL}")).unwrap_err();
        assert!(error.contains("field `cors_origins`"), "{bad}: {error}");
    }
}

#[test]
fn settings_and_tools_load() {
    let config = check(&format!("workers = 3\npending_status = 202\n{TOOL}")).unwrap();
    assert_eq!(config.settings.workers, 3);
    assert_eq!(config.settings.pending_status, 202);
    assert!(config.tools.resolve("echo").is_some());
}

#[test]
fn errors_name_file_tool_and_field() {
    let error = check(&TOOL.replace("format = \"lines\"", "format = \"xml\"")).unwrap_err();
    assert!(
        error.starts_with("tools.toml: tool `echo@1` (tools[0]): field `outputs[0].format`"),
        "{error}"
    );
    let error = check(&TOOL.replace("\"hi\"", "\"{inputs.x}\"")).unwrap_err();
    assert!(
        error.starts_with("tools.toml: tool `echo@1` (tools[0]): field `command[1]`"),
        "{error}"
    );
    let error = check(&format!("listne = \"x\"\n{TOOL}")).unwrap_err();
    assert!(error.contains("listne"), "{error}");
    let error = check("workers = 1").unwrap_err();
    assert!(error.contains("no tools"), "{error}");
    let error = check(&format!("pending_status = 201\n{TOOL}")).unwrap_err();
    assert!(error.contains("pending_status"), "{error}");
}

#[test]
fn overrides_win() {
    let overrides = Overrides {
        workers: Some(7),
        ..Overrides::default()
    };
    let source = ConfigSource::Text {
        name: "t".into(),
        text: format!("workers = 3\n{TOOL}"),
    };
    let config = Config::load_with_env(&source, &overrides, false).unwrap();
    assert_eq!(config.settings.workers, 7);
}
