//! The load harness (`examples/load`, issue #5) in its smoke size, so it cannot rot: every
//! scenario runs small (50 mailboxes, 20 messages, a 200-message flag storm) against the debug
//! binary, and prints its table. The figures of a debug build mean nothing; the run completing does.

#[path = "../examples/load/changes.rs"]
mod changes;
#[path = "common/db.rs"]
#[allow(dead_code)]
mod db;
#[path = "common/dovecot/mod.rs"]
#[allow(dead_code)]
mod dovecot;
#[path = "../examples/load/rig.rs"]
#[allow(dead_code)]
mod rig;
#[path = "../examples/load/scenarios.rs"]
mod scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_harness_smoke() -> anyhow::Result<()> {
    let s = scenarios::Settings {
        bin: env!("CARGO_BIN_EXE_idlesync").into(),
        rate: None,
    };
    let tables = scenarios::smoke(&s).await?;
    assert_eq!(tables.len(), 5);
    for t in &tables {
        let text = t.render();
        println!("{text}");
        assert!(t.rows.len() >= 3, "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }
    Ok(())
}
