// `sqlx::migrate!` embeds the migration folders at compile time, but cargo does not know to
// rebuild when a migration file is added or changed. This tells it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
