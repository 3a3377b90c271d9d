// Included by the build scripts of batchgate-server and batchgate (`include!`).
/// Tests that need something a machine may not have (a PostgreSQL server, Slurm, a
/// browser, root) are gated by an environment variable, read when the tests are built
/// (`gate_*` cfgs; a change of the variable rebuilds): without it they are listed as
/// ignored, with the reason. `.ci/run` sets them all and fails if any test is ignored.
const GATES: &[(&str, &str)] = &[
    ("gate_pg", "BATCHGATE_TEST_PG_URL"),
    ("gate_pg_cluster", "BATCHGATE_TEST_PG_CLUSTER"),
    ("gate_s3", "BATCHGATE_TEST_S3_URL"),
    ("gate_azure", "BATCHGATE_TEST_AZURE_URL"),
    ("gate_slurm", "BATCHGATE_TEST_SLURM"),
    ("gate_container", "BATCHGATE_TEST_CONTAINER_ENGINE"),
    ("gate_browser", "BATCHGATE_TEST_BROWSER"),
    ("gate_python", "BATCHGATE_TEST_PYTHON"),
    ("gate_node", "BATCHGATE_TEST_NODE"),
    ("gate_root", "BATCHGATE_TEST_ROOT"),
    ("gate_tools", "BATCHGATE_TEST_TOOLS"),
];

fn test_gates() {
    for (cfg, variable) in GATES {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={variable}");
        if std::env::var_os(variable).is_some_and(|value| !value.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}
